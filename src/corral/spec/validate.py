"""Host-dependent validation: does this spec fit this host and this QEMU?

Pure checks live on the models; these need :class:`~corral.host.caps.HostCaps` and, for files
named in the spec, the filesystem. They run just before a VM is created or started.
"""

from __future__ import annotations

import os

from corral.errors import InvalidInput
from corral.host.caps import HostCaps
from corral.spec.vm import VmSpec
from corral.units import format_size


def validate_spec(spec: VmSpec, caps: HostCaps) -> None:
    """Check ``spec`` against the host.

    :raise InvalidInput: naming the field that does not fit and what the host offers.
    """
    machine = caps.machines.get(spec.machine)
    if machine is None:
        known = sorted(m for m in caps.machines if "-" not in m or m.startswith("pc-q35"))[:8]
        raise InvalidInput(
            "machine",
            f"{spec.machine!r} is not a machine type of this QEMU; try one of {', '.join(known)}",
        )
    if spec.vcpus > machine.max_cpus:
        raise InvalidInput(
            "vcpus", f"{spec.vcpus} exceeds machine {spec.machine!r}'s limit of {machine.max_cpus}"
        )
    if spec.memory > caps.host_memory:
        raise InvalidInput(
            "memory",
            f"{format_size(spec.memory)} exceeds the host's {format_size(caps.host_memory)}",
        )
    for field in ("kernel", "initrd"):
        path = getattr(spec.boot, field)
        if path is not None and not os.access(path, os.R_OK):
            raise InvalidInput(f"boot.{field}", f"{path} does not exist or is not readable")
    if spec.boot.kind == "firmware" and spec.boot.firmware == "uefi" and caps.ovmf_code is None:
        raise InvalidInput("boot.firmware", "uefi needs OVMF (apt-get install ovmf)")
    models = {nic.model for nic in spec.nics}
    for device in sorted(models):
        if device not in caps.devices:
            raise InvalidInput("nics.model", f"this QEMU has no {device} device")
