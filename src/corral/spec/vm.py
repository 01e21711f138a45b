"""What a virtual machine is: the frozen, validated ``VmSpec`` and its parts.

Everything here is pure: checks that need only the spec live on the models (``check_*``
validators); checks that need the host (machine types, files, memory) live in
:mod:`corral.spec.validate`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from corral.spec.net import NETWORK_NAME_PATTERN
from corral.units import GiB, MiB, parse_size

#: A VM name: what virsh users type, safe as a file name and in QEMU options.
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: A disk or NIC name inside one VM; also used in QEMU node names and device ids.
DEVICE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,15}$"
#: Machine types and CPU models as QEMU names them.
QEMU_IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

MIN_MEMORY = 16 * MiB
MAX_MEMORY = 4096 * GiB
MAX_VCPUS = 255
MAX_DISK = 64 * 1024 * GiB
MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
#: Kernel command lines longer than this do not fit the x86 boot protocol.
MAX_CMDLINE = 2048
#: How a VM shows its screen: not at all, over VNC (:class:`VncSpec`), or in a window or
#: terminal of the host where QEMU runs (``curses``, ``sdl``, ``gtk``: where this QEMU has
#: that front end, see :func:`corral.spec.validate.validate_spec`).
DisplayMode = Literal["none", "vnc", "curses", "sdl", "gtk"]
#: The display modes that draw on the host itself rather than on a socket.
LOCAL_DISPLAYS = frozenset({"curses", "sdl", "gtk"})


def _size(default_unit: str) -> BeforeValidator:
    def parse(value: object) -> object:
        if isinstance(value, str | int) and not isinstance(value, bool):
            try:
                return parse_size(value, default_unit)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    return BeforeValidator(parse)


#: Memory in bytes; a bare number means MiB, as for ``qemu -m``.
MemorySize = Annotated[int, _size("M")]
#: A disk size in bytes; a bare number means bytes.
DiskSize = Annotated[int, _size("")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class DiskSpec(_Frozen):
    """One virtual disk: a copy-on-write clone of an image, or a blank volume."""

    #: Name inside the VM (``root``, ``data``); the file is ``<name>.qcow2``.
    name: str = Field(pattern=DEVICE_NAME_PATTERN)
    #: Base image for a linked clone; ``None`` for a blank volume.
    image: str | None = Field(default=None, pattern=NAME_PATTERN)
    #: Virtual size in bytes. Required for a blank volume; for a clone, grows the image.
    size: DiskSize | None = None
    #: Attach read-only.
    readonly: bool = False
    #: Host page cache mode, as QEMU names it.
    cache: Literal["writeback", "none", "writethrough", "directsync", "unsafe"] = "writeback"
    #: Pass guest discards (TRIM) down so deleted blocks free host space.
    discard: bool = True

    @field_validator("size")
    @classmethod
    def check_size(cls, value: int | None) -> int | None:
        if value is None:
            return None
        if value < MiB:
            raise ValueError("must be at least 1 MiB")
        if value > MAX_DISK:
            raise ValueError("must be at most 64 TiB")
        if value % 512:
            raise ValueError("must be a multiple of 512 bytes")
        return value

    @model_validator(mode="after")
    def check_source(self) -> DiskSpec:
        if self.image is None and self.size is None:
            raise ValueError("a blank disk needs a size")
        return self


class PortForward(_Frozen):
    """A host port forwarded to a guest port through user-mode NAT."""

    protocol: Literal["tcp", "udp"] = "tcp"
    #: Host address to listen on; loopback unless the user chooses otherwise.
    host_addr: str = "127.0.0.1"
    host_port: int = Field(ge=1, le=65535)
    guest_port: int = Field(ge=1, le=65535)

    @field_validator("host_addr")
    @classmethod
    def check_host_addr(cls, value: str) -> str:
        try:
            addr = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None
        return str(addr)


class NicSpec(_Frozen):
    """A network card: on user-mode NAT (``user``), or on a tap device in one of corral's
    virtual networks (``network``, see :mod:`corral.spec.net`)."""

    name: str = Field(default="net0", pattern=DEVICE_NAME_PATTERN)
    kind: Literal["user", "network"] = "user"
    model: Literal["virtio-net-pci", "e1000"] = "virtio-net-pci"
    #: MAC address (lower case); ``None`` lets corral derive one from the VM's UUID.
    mac: str | None = None
    #: The virtual network a ``network`` NIC is on (by name).
    network: str | None = Field(default=None, pattern=NETWORK_NAME_PATTERN)
    #: A fixed IPv4 address for a ``network`` NIC; ``None``: the network assigns one.
    ip: ipaddress.IPv4Address | None = None
    #: Carrier up (``True``) or down: a card with its link down is still there, and still
    #: configured in the guest, but passes no traffic.
    link: bool = True
    #: Host ports forwarded to the guest (``user`` only).
    forwards: tuple[PortForward, ...] = ()
    #: Cut the guest off from the host and the outside (only forwarded ports reach it;
    #: ``user`` only).
    restrict: bool = False
    #: Boot from the network through this card's iPXE ROM (firmware boot), before any disk.
    boot: bool = False

    @field_validator("ip")
    @classmethod
    def check_ip(cls, value: ipaddress.IPv4Address | None) -> ipaddress.IPv4Address | None:
        if value is not None and (
            value.is_unspecified or value.is_loopback or value.is_multicast or value.is_reserved
        ):
            raise ValueError(f"{value} is not a host address a guest can have")
        return value

    @model_validator(mode="after")
    def check_kind(self) -> NicSpec:
        if self.kind == "user":
            if self.network is not None or self.ip is not None:
                raise ValueError("network and ip apply only to kind 'network'")
            return self
        if self.network is None:
            raise ValueError("a nic of kind 'network' needs the network it is on (network)")
        if self.forwards:
            raise ValueError("port forwards apply only to kind 'user' (user-mode NAT)")
        if self.restrict:
            raise ValueError("restrict applies only to kind 'user' (user-mode NAT)")
        return self

    @field_validator("mac")
    @classmethod
    def check_mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if not MAC_PATTERN.match(value):
            raise ValueError("must be six hex pairs separated by colons, e.g. 52:54:00:12:34:56")
        if int(value[:2], 16) & 1:
            raise ValueError("must be a unicast address (the first octet's low bit clear)")
        return value


class BootSpec(_Frozen):
    """How the VM boots: through firmware from its first disk, or straight into a kernel."""

    kind: Literal["firmware", "kernel"] = "firmware"
    #: Firmware for ``kind="firmware"``: SeaBIOS or OVMF.
    firmware: Literal["bios", "uefi"] = "bios"
    #: Host path of the kernel (an uncompressed ELF ``vmlinux`` boots through PVH).
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""

    @field_validator("kernel", "initrd")
    @classmethod
    def check_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("cmdline")
    @classmethod
    def check_cmdline(cls, value: str) -> str:
        if len(value) > MAX_CMDLINE:
            raise ValueError(f"is {len(value)} characters; the limit is {MAX_CMDLINE}")
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @model_validator(mode="after")
    def check_kind(self) -> BootSpec:
        if self.kind == "kernel" and self.kernel is None:
            raise ValueError("kernel boot needs a kernel")
        if self.kind == "firmware" and (self.kernel or self.initrd or self.cmdline):
            raise ValueError("kernel, initrd and cmdline apply only to kind 'kernel'")
        return self


class SerialSpec(_Frozen):
    """The serial console: logged to a file, attachable through a UNIX socket."""

    enabled: bool = True


class VncSpec(_Frozen):
    """A VNC display. It listens only on a UNIX socket or on loopback."""

    listen: Literal["unix", "loopback"] = "unix"
    #: Display number for ``loopback`` (port 5900 + display).
    display: int | None = Field(default=None, ge=0, le=99)
    #: Clients authenticate with the VM's VNC password (RFB's DES challenge), which QEMU
    #: reads at start from ``vnc-password`` in the VM's directory (mode 0600): corral keeps
    #: it nowhere else. ``corral vnc NAME --password-stdin`` sets it.
    password: bool = False

    @model_validator(mode="after")
    def check_display(self) -> VncSpec:
        if self.listen == "loopback" and self.display is None:
            raise ValueError("a loopback VNC display needs a display number (0-99)")
        if self.listen == "unix" and self.display is not None:
            raise ValueError("a display number applies only to loopback VNC")
        return self


class CdromSpec(_Frozen):
    """A removable CD-ROM drive (IDE, on the pc and q35 families): empty, or with an ISO in it.

    The medium can change while the VM runs (``corral cdrom insert`` / ``eject``); the spec
    holds the one in the tray, so a restart keeps it.
    """

    #: Host path of the ISO image in the tray (attached raw and read-only); ``None``: empty.
    path: str | None = None
    #: Boot from it before the first disk (firmware boot).
    boot: bool = False

    @field_validator("path")
    @classmethod
    def check_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\x00" in value):
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def check_boot(self) -> CdromSpec:
        if self.boot and self.path is None:
            raise ValueError("booting from the CD-ROM needs an ISO in it")
        return self


#: The USB devices a VM can have: QEMU's emulated tablet, keyboard, and mass storage
#: (backed by a volume of the VM's project), and a device of the host passed through
#: (``usb-host``, by vendor and product id; see :mod:`corral.compute.usb` for who may).
UsbKind = Literal["usb-tablet", "usb-kbd", "usb-storage", "usb-host"]
#: A USB device's id: its kind and a token of 8 hex digits; a mass-storage device has its
#: volume's device id (``vol-`` and 16 hex digits, see :mod:`corral.qemu.volume_nodes`).
USB_ID_PATTERN = r"^(usb-(tablet|kbd|host)-[0-9a-f]{8}|vol-[0-9a-f]{16})$"


class UsbDeviceSpec(_Frozen):
    """One device on the VM's USB controller (``qemu-xhci``), which the VM has when it has
    any USB device."""

    #: The device's QEMU id, stable for its life (never a counter or a position).
    id: str = Field(pattern=USB_ID_PATTERN)
    device: UsbKind
    #: For ``usb-storage``: the id (UUID) of the volume it presents.
    volume: UUID | None = None
    #: For ``usb-host``: the host device's USB vendor and product ids.
    vendorid: int | None = Field(default=None, ge=0, le=0xFFFF)
    productid: int | None = Field(default=None, ge=0, le=0xFFFF)

    @model_validator(mode="after")
    def check_volume(self) -> UsbDeviceSpec:
        if (self.device == "usb-storage") != (self.volume is not None):
            raise ValueError("a volume goes with usb-storage, and only with it")
        host = self.device == "usb-host"
        if any((v is not None) != host for v in (self.vendorid, self.productid)):
            raise ValueError("vendorid and productid go with usb-host, and only with it")
        if self.id.startswith("vol-") != (self.device == "usb-storage"):
            raise ValueError(f"id {self.id!r} does not fit device {self.device!r}")
        return self


class VmSpec(_Frozen):
    """Everything needed to run one VM, independent of the host it runs on."""

    name: str = Field(pattern=NAME_PATTERN)
    uuid: UUID = Field(default_factory=uuid4)
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    memory: MemorySize = 512 * MiB
    #: QEMU machine type; ``pc`` boots every time under TCG with PVH (see docs/guests.md).
    machine: str = Field(default="pc", pattern=QEMU_IDENT_PATTERN)
    #: CPU model; ``None`` picks ``host`` under KVM and ``qemu64`` (QEMU's default) under TCG.
    cpu: str | None = Field(default=None, pattern=QEMU_IDENT_PATTERN)
    disks: tuple[DiskSpec, ...] = ()
    boot: BootSpec = BootSpec()
    nics: tuple[NicSpec, ...] = ()
    serial: SerialSpec = SerialSpec()
    #: The display; ``vnc`` goes with :attr:`vnc` (either one implies the other).
    display: DisplayMode = "none"
    vnc: VncSpec | None = None
    #: Attach the VM's cloud-init NoCloud seed (``seed.iso``, volume ``cidata``) as a
    #: read-only virtio disk after its own disks.
    seed: bool = False
    #: A removable CD-ROM drive; ``None``: none.
    cdrom: CdromSpec | None = None
    #: Devices on a USB controller (present when this is not empty).
    usb: tuple[UsbDeviceSpec, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def imply_display(cls, data: object) -> object:
        """A spec with a ``vnc`` section has the ``vnc`` display (specs saved before there
        were display modes), and ``display: vnc`` alone has a VNC on a UNIX socket."""
        if isinstance(data, dict):
            if "display" not in data and data.get("vnc") is not None:
                return {**data, "display": "vnc"}
            if data.get("display") == "vnc" and data.get("vnc") is None:
                return {**data, "vnc": VncSpec()}
        return data

    @field_serializer("memory")
    def dump_memory(self, value: int) -> str:
        """Memory is saved with its unit, so that reading it back never reinterprets it."""
        return f"{value // MiB}M"

    @field_validator("machine")
    @classmethod
    def check_machine(cls, value: str) -> str:
        if value not in ("pc", "q35", "microvm") and not value.startswith("pc-"):
            raise ValueError("must be pc, q35, microvm or a versioned pc-* type")
        return value

    @field_validator("memory")
    @classmethod
    def check_memory(cls, value: int) -> int:
        if value % MiB:
            raise ValueError("must be a whole number of MiB")
        if value < MIN_MEMORY:
            raise ValueError("must be at least 16 MiB")
        if value > MAX_MEMORY:
            raise ValueError("must be at most 4 TiB")
        return value

    @model_validator(mode="after")
    def check_devices(self) -> VmSpec:
        disk_names = [d.name for d in self.disks]
        if len(set(disk_names)) != len(disk_names):
            raise ValueError("disk names must be unique")
        nic_names = [n.name for n in self.nics]
        if len(set(nic_names)) != len(nic_names):
            raise ValueError("nic names must be unique")
        macs = [self.nic_mac(i) for i in range(len(self.nics))]
        if len(set(macs)) != len(macs):
            raise ValueError("nic MAC addresses must be unique")
        ports = [(f.protocol, f.host_addr, f.host_port) for n in self.nics for f in n.forwards]
        if len(set(ports)) != len(ports):
            raise ValueError("a host port can be forwarded only once")
        if self.seed and "seed" in disk_names:
            raise ValueError("the disk name 'seed' is taken by the cloud-init seed")
        if self.machine == "microvm" and self.boot.kind != "kernel":
            raise ValueError("machine 'microvm' has no firmware disk boot; use kernel boot")
        if self.machine == "microvm" and any(n.model == "e1000" for n in self.nics):
            raise ValueError("machine 'microvm' has no PCI bus for e1000; use virtio-net-pci")
        if self.machine == "microvm" and self.cdrom is not None:
            raise ValueError("machine 'microvm' has no IDE bus for a CD-ROM drive")
        if self.machine == "microvm" and self.usb:
            raise ValueError("machine 'microvm' has no PCI bus for a USB controller")
        usb_ids = [u.id for u in self.usb]
        if len(set(usb_ids)) != len(usb_ids):
            raise ValueError("USB device ids must be unique")
        if self.cdrom is not None and self.cdrom.boot and self.boot.kind != "firmware":
            raise ValueError("booting from the CD-ROM needs firmware boot")
        if self.vnc is not None and self.display != "vnc":
            raise ValueError(f"a vnc section needs display 'vnc', not {self.display!r}")
        return self

    @model_validator(mode="after")
    def check_fixed_ips(self) -> VmSpec:
        fixed = [(n.network, n.ip) for n in self.nics if n.ip is not None]
        if len(set(fixed)) != len(fixed):
            raise ValueError("a fixed ip can be given to one nic of a network only")
        return self

    @model_validator(mode="after")
    def check_boot_devices(self) -> VmSpec:
        boot_nics = [n.name for n in self.nics if n.boot]
        if len(boot_nics) > 1:
            raise ValueError("only one nic can boot from the network")
        if boot_nics and self.boot.kind != "firmware":
            raise ValueError("booting from the network needs firmware boot")
        cdrom_boot = self.cdrom is not None and self.cdrom.boot
        if boot_nics and cdrom_boot:
            raise ValueError("boot from the CD-ROM or from the network, not both")
        if self.boot.kind == "firmware" and not (self.disks or cdrom_boot or boot_nics):
            raise ValueError(
                "firmware boot needs at least one disk, or a CD-ROM or NIC to boot from"
            )
        return self

    def nic_mac(self, index: int) -> str:
        """The MAC of NIC ``index``: its own, or one derived from the VM's UUID (stable)."""
        nic = self.nics[index]
        if nic.mac is not None:
            return nic.mac
        raw = self.uuid.bytes
        return f"52:54:00:{raw[0]:02x}:{raw[1]:02x}:{(raw[2] + index) % 256:02x}"
