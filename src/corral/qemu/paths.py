"""The host files one running VM uses, as data for the pure argv builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DiskFormat = Literal["qcow2", "raw"]


@dataclass(frozen=True)
class ImageLayer:
    """One file of a disk's chain and its format (never guessed by QEMU)."""

    path: str
    format: DiskFormat


@dataclass(frozen=True)
class DiskFiles:
    """A disk's chain: ``top`` is written to; ``backing`` are read-only layers, nearest first."""

    top: ImageLayer
    backing: tuple[ImageLayer, ...] = ()


@dataclass(frozen=True)
class VmPaths:
    """Where a VM's runtime files live (all inside its directory, ``vms/<name>/``)."""

    #: The VM's directory.
    root: str
    #: QMP monitor socket for commands (one client at a time: each command connects).
    qmp_socket: str
    #: A second QMP monitor, for events only: corrald stays connected to it while QEMU runs.
    events_socket: str
    #: Serial console socket (one interactive client at a time).
    serial_socket: str
    #: Everything the guest writes to its serial console.
    serial_log: str
    #: QEMU writes its PID here.
    pidfile: str
    #: VNC socket, used when the spec asks for a UNIX-socket display.
    vnc_socket: str
    #: Disk chains by disk name.
    disks: dict[str, DiskFiles] = field(default_factory=dict)
    #: OVMF variable store copy for UEFI guests.
    ovmf_vars: str | None = None
    #: The cloud-init NoCloud seed (an ISO 9660 image), attached when the spec asks for it.
    seed_iso: str | None = None
    #: The volumes attached to the VM, by device id (see :mod:`corral.qemu.volume_nodes`).
    volumes: dict[str, ImageLayer] = field(default_factory=dict)

    @property
    def text_socket(self) -> str:
        """The terminal of a QEMU with a ``curses`` display (:mod:`corral.qemu.ptyholder`)."""
        return f"{self.root}/text.sock"

    @property
    def vnc_password(self) -> str:
        """The VNC password, read by QEMU at start when the spec asks for password auth."""
        return f"{self.root}/vnc-password"

    @classmethod
    def for_dir(
        cls,
        root: str,
        disks: dict[str, DiskFiles] | None = None,
        volumes: dict[str, ImageLayer] | None = None,
    ) -> VmPaths:
        """The standard layout inside ``root``."""
        return cls(
            root=root,
            qmp_socket=f"{root}/qmp.sock",
            events_socket=f"{root}/events.sock",
            serial_socket=f"{root}/serial.sock",
            serial_log=f"{root}/serial.log",
            pidfile=f"{root}/qemu.pid",
            vnc_socket=f"{root}/vnc.sock",
            disks=dict(disks or {}),
            ovmf_vars=f"{root}/OVMF_VARS.fd",
            seed_iso=f"{root}/seed.iso",
            volumes=dict(volumes or {}),
        )
