"""Host capabilities as data: what :func:`corral.qemu.argv.build_argv` may rely on."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class MachineType(BaseModel):
    """One ``-machine`` type as ``query-machines`` reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: The versioned type this alias points at (``pc`` -> ``pc-i440fx-7.2``).
    alias: str | None = None
    max_cpus: int
    is_default: bool = False
    #: QEMU marks the type deprecated.
    deprecated: bool = False


class HostCaps(BaseModel):
    """What :func:`corral.qemu.argv.build_argv` may rely on. Pure data: no I/O in here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Absolute path of ``qemu-system-x86_64``.
    qemu_binary: str
    #: (major, minor, micro).
    qemu_version: tuple[int, int, int]
    #: Machine types by name, aliases included.
    machines: dict[str, MachineType]
    #: Device types this binary has (``virtio-blk-pci``, ``isa-serial``, ...).
    devices: frozenset[str]
    #: Accelerators compiled in (``kvm``, ``tcg``).
    accelerators: frozenset[str]
    #: The accelerator to use: KVM only when its functional self-test passed.
    accel: Literal["kvm", "tcg"]
    #: Why KVM is not used (empty when it is).
    kvm_reason: str = ""
    #: Whether ``-sandbox`` (seccomp) is available.
    seccomp: bool = False
    #: OVMF firmware code image for UEFI boot, if installed.
    ovmf_code: str | None = None
    #: Online host CPUs and memory in bytes.
    host_cpus: int
    host_memory: int
    #: The OVMF variable-store template that matches :attr:`ovmf_code` (copy it per VM).
    ovmf_vars: str | None = None
    #: ``-cpu`` models this binary knows (``qemu64``, ``host``, ``Skylake-Server``, ...).
    cpu_models: frozenset[str] = frozenset()
    #: The KVM self-test's outcome in one line, with its duration (empty when it did not run).
    kvm_test: str = ""
    #: Display front ends this binary has (``none``, ``curses``, ``gtk``, ``sdl``, ...).
    displays: frozenset[str] = frozenset({"none"})
    #: ``/dev/vhost-net`` is there and usable: a virtio NIC on a tap gets ``vhost``.
    vhost_net: bool = False


# --- Finding the binary -----------------------------------------------------------------------
