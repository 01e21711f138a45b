"""Host-dependent validation: does this spec fit this host and this QEMU?

Pure checks live on the models; these need :class:`~corral.host.caps.HostCaps` and, for files
named in the spec, the filesystem. They run just before a VM is created or started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from corral.errors import InvalidInput
from corral.host.caps import HostCaps
from corral.spec.vm import LOCAL_DISPLAYS, VmSpec
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
    check_display(spec, caps, os.environ)


def check_display(spec: VmSpec, caps: HostCaps, environ: Mapping[str, str]) -> None:
    """Check the host can show ``spec``'s display where corral runs QEMU.

    A window (``sdl``, ``gtk``) needs that front end in this QEMU and a graphical session in
    the environment QEMU inherits (``$DISPLAY`` or ``$WAYLAND_DISPLAY``). ``curses`` draws on
    the terminal corral gives QEMU (:mod:`corral.qemu.ptyholder`), reached with ``corral
    console --text``.

    :param environ: the environment QEMU is started with.
    :raise InvalidInput: (field ``display``) naming the mode and what the host offers.
    """
    mode = spec.display
    if mode not in LOCAL_DISPLAYS:
        return
    if mode not in caps.displays:
        offered = sorted({"none", "vnc"} | (caps.displays & LOCAL_DISPLAYS))
        raise InvalidInput(
            "display",
            f"this host's QEMU has no {mode!r} display; it offers {', '.join(offered)}"
            + (" (apt-get install qemu-system-gui)" if mode in ("sdl", "gtk") else ""),
        )
    if mode != "curses" and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        raise InvalidInput(
            "display",
            f"{mode!r} opens a window, and corral runs QEMU without a graphical session "
            "($DISPLAY or $WAYLAND_DISPLAY); use vnc",
        )
