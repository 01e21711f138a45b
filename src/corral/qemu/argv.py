"""The QEMU command line of one VM, built from its spec, the host's capabilities and its paths.

:func:`build_argv` is pure: it reads no file, no environment and no clock, so the same inputs
always give the same command line (golden tests in ``tests/golden/argv`` hold it to that).

How the command line is shaped:

- ``-nodefaults -no-user-config``: QEMU adds no device and reads no config file of its own;
  every device is named here.
- Structured options (``-blockdev``, ``-device``, ``-netdev``) are JSON, dumped with sorted keys,
  so a user-supplied string is a JSON string and can never become an option.
- The few options that only exist in QemuOpts form (``-chardev``, ``-vnc``, ``-name``) take
  user-influenced values (paths) only through :func:`_opt`, which doubles commas, and only
  behind an explicit ``key=`` (an implied first value would treat a ``=`` in a path as a key).
- Disks are a chain of explicit nodes: a ``file`` node and a format node per layer, backing
  layers read-only, and every qcow2 node's ``backing`` named (or ``null``), so QEMU never opens
  a file because an image header asked for it.
- Ids and node names come from the spec (disk and NIC names), never from counters.
- Two QMP monitors: one for commands, one that a long-lived client listens to for events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from corral.config import MAX_SOCKET_PATH
from corral.errors import HostError, InvalidInput
from corral.host.caps import HostCaps
from corral.qemu.nic_nodes import Bus, plan_nic
from corral.qemu.paths import ImageLayer, VmPaths
from corral.qemu.volume_nodes import Plug, plan_plug
from corral.spec.vm import LOCAL_DISPLAYS, DiskSpec, UsbDeviceSpec, VmSpec
from corral.units import MiB

#: JSON ``-netdev`` exists since QEMU 7.1 (verified on 7.2).
MIN_QEMU = (7, 1, 0)
#: QEMU's rule for node names and ids: a letter, then letters, digits, ``_.-``; 31 at most.
NODE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")

_QMP_CHARDEV = "charmonitor"
_EVENTS_CHARDEV = "charevents"
_SERIAL_CHARDEV = "charserial0"
#: The ``secret`` object holding the VNC password.
VNC_SECRET = "vnc-password"  # noqa: S105 (an object id)
_FW_CODE = "fw-code"
_FW_VARS = "fw-vars"
#: Node name of the cloud-init seed (disk nodes always have a ``.`` in theirs).
_SEED = "seed"
#: Node name of the medium in the CD-ROM drive, and the drive's device id.
CDROM_NODE = "cdrom"
CDROM_DEVICE = "cdrom0"
#: Device id of the USB controller; its devices plug into bus ``usb.0``.
USB_CONTROLLER = "usb"


@dataclass(frozen=True)
class _Cache:
    """A cache mode as blockdev options plus the device's ``write-cache``, as libvirt maps it."""

    direct: bool
    no_flush: bool
    write_cache: bool


_CACHE = {
    "writeback": _Cache(direct=False, no_flush=False, write_cache=True),
    "none": _Cache(direct=True, no_flush=False, write_cache=True),
    "writethrough": _Cache(direct=False, no_flush=False, write_cache=False),
    "directsync": _Cache(direct=True, no_flush=False, write_cache=False),
    "unsafe": _Cache(direct=False, no_flush=True, write_cache=True),
}

#: Device models per bus: microvm has no PCI; its virtio devices sit on virtio-mmio.
_DISK_DRIVER: dict[Bus, str] = {"pci": "virtio-blk-pci", "mmio": "virtio-blk-device"}
_VIDEO_DRIVER: dict[Bus, str] = {"pci": "VGA", "mmio": "virtio-gpu-device"}
#: The iPXE option ROM QEMU loads by default for a NIC model that boots from the network,
#: from its firmware path (``qemu-system-x86_64 -L help``; Debian: /usr/lib/ipxe/qemu).
NETBOOT_ROM: dict[str, str] = {"virtio-net-pci": "efi-virtio.rom", "e1000": "efi-e1000.rom"}


def build_argv(spec: VmSpec, caps: HostCaps, paths: VmPaths) -> list[str]:
    """The complete QEMU command line for ``spec`` on this host; the binary comes first.

    :param spec: the validated VM.
    :param caps: what the host's QEMU can do (only read, never probed).
    :param paths: where the VM's sockets, logs and disk chains are.
    :raise InvalidInput: the spec asks for something no command line can express (a machine
        type outside the pc, q35 and microvm families, an e1000 on microvm).
    :raise HostError: the host lacks what the spec needs (OVMF for UEFI, a device model, a QEMU
        new enough), or a socket path is too long for a UNIX socket.
    :raise ValueError: ``paths`` does not match ``spec`` (a disk without files, a raw layer with
        backing layers below it, no OVMF variable store): a bug in the caller.
    """
    if caps.qemu_version < MIN_QEMU:
        have = ".".join(map(str, caps.qemu_version))
        raise HostError(f"QEMU {have} is too old; corral needs QEMU 7.1 or newer")
    vm = _Vm(spec, caps, paths, _bus(spec.machine))
    argv = [caps.qemu_binary]
    argv += _identity(spec)
    argv += _hardening(caps, paths)
    argv += _monitor(paths)
    argv += _machine(vm)
    argv += _boot(vm)
    for index, disk in enumerate(spec.disks):
        argv += _disk(vm, index, disk)
    argv += _seed(vm)
    argv += _cdrom(vm)
    on_usb = {u.id for u in spec.usb}
    for dev in sorted(paths.volumes):
        if dev not in on_usb:
            argv += _volume(vm, dev, paths.volumes[dev])
    argv += _usb(vm)
    for index in range(len(spec.nics)):
        argv += _nic(vm, index)
    argv += _serial(vm)
    argv += _display(vm)
    return argv


def incoming_argv() -> list[str]:
    """What :func:`build_argv`'s command line gets to start a machine that loads a saved
    state instead of booting: the vCPUs stay stopped (``-S``) and QEMU waits for
    ``migrate-incoming`` (``-incoming defer``), whose source is passed over QMP as a file
    descriptor (the sandbox forbids QEMU to spawn or to open a path named by a user)."""
    return ["-S", "-incoming", "defer"]


@dataclass(frozen=True)
class _Vm:
    """The inputs of one build, passed together to the per-concern builders."""

    spec: VmSpec
    caps: HostCaps
    paths: VmPaths
    #: Where devices plug in on the spec's machine type.
    bus: Bus


def _opt(value: str) -> str:
    """Escape a value for a QemuOpts option string: a comma is written as two.

    :param value: the value, as the user or the paths gave it.
    """
    return value.replace(",", ",,")


def _json(value: Mapping[str, object]) -> str:
    """Dump a JSON option deterministically: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _device(caps: HostCaps, props: Mapping[str, object]) -> list[str]:
    """``-device`` in JSON form, checked against the devices this QEMU has.

    :raise HostError: the binary lacks the device model.
    """
    driver = str(props["driver"])
    if driver not in caps.devices:
        raise HostError(f"{caps.qemu_binary} has no device {driver!r}")
    return ["-device", _json(props)]


def _socket(path: str) -> str:
    """Check that ``path`` fits a UNIX socket address.

    :raise HostError: it is longer than ``sockaddr_un`` allows.
    """
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise HostError(
            f"socket path {path!r} is {len(path.encode())} bytes; UNIX sockets allow "
            f"{MAX_SOCKET_PATH}: choose a shorter state directory"
        )
    return path


def _bus(machine: str) -> Bus:
    """Where devices plug in on ``machine``: PCI for the pc and q35 families, MMIO on microvm.

    :raise InvalidInput: the machine type is of another family.
    """
    if machine == "microvm":
        return "mmio"
    if machine in ("pc", "q35") or machine.startswith("pc-"):
        return "pci"
    raise InvalidInput(
        "machine", f"{machine!r} is not supported; use pc, q35, microvm or a versioned pc-* type"
    )


def _identity(spec: VmSpec) -> list[str]:
    """Name, UUID, and no devices or configuration that QEMU would add by itself."""
    return [
        "-name",
        f"guest={_opt(spec.name)},debug-threads=on",
        "-uuid",
        str(spec.uuid),
        "-nodefaults",
        "-no-user-config",
        "-msg",
        "timestamp=on",
    ]


def _hardening(caps: HostCaps, paths: VmPaths) -> list[str]:
    """Seccomp sandbox (when built in) and the pidfile."""
    argv = []
    if caps.seccomp:
        argv += [
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
    return [*argv, "-pidfile", paths.pidfile]


def _monitor(paths: VmPaths) -> list[str]:
    """Two QMP monitors on UNIX sockets that QEMU listens on without waiting for a client.

    A QMP socket serves one client at a time. Commands connect to ``qmp_socket`` for as long
    as they need it; ``events_socket`` is for a client that stays (corrald, listening to the
    events QEMU sends every monitor), so that it never keeps a command waiting.
    """
    argv: list[str] = []
    for chardev, mon, path in (
        (_QMP_CHARDEV, "monitor", paths.qmp_socket),
        (_EVENTS_CHARDEV, "events", paths.events_socket),
    ):
        argv += [
            "-chardev",
            f"socket,id={chardev},path={_opt(_socket(path))},server=on,wait=off",
            "-mon",
            f"chardev={chardev},id={mon},mode=control",
        ]
    return argv


def _cpu_model(spec: VmSpec, caps: HostCaps) -> str:
    """The ``-cpu`` model: the spec's, else ``host`` under KVM, else ``qemu64`` with RDRAND
    under TCG."""
    if spec.cpu is not None:
        return spec.cpu
    if caps.accel == "kvm":
        return "host"
    # Under TCG: qemu64 is QEMU's own default, written out so a persisted runtime does not
    # change meaning with the QEMU version. It is what booted the reference guest 30 times out
    # of 30 (docs: MACHINE.md); ``max`` turns on every feature TCG can emulate (la57 among
    # them: 5-level paging costs every emulated page walk) and aborted under KVM on this
    # hardware. Guests needing x86-64-v2 can name a model in the spec. RDRAND (which TCG
    # emulates from the host's getrandom) lets the guest kernel seed its random generator at
    # once: without it, anything that reads /dev/random early (an SSH server making its host
    # key) waits about a second under TCG (reference guest: ready in 2.2 s instead of 2.9 s).
    return "qemu64,rdrand=on"


def _machine(vm: _Vm) -> list[str]:
    """Machine type (with the UEFI flash nodes), accelerator, CPU, memory, vCPUs."""
    spec = vm.spec
    machine = _opt(spec.machine)
    if spec.boot.kind == "firmware" and spec.boot.firmware == "uefi":
        machine += f",pflash0={_FW_CODE},pflash1={_FW_VARS}"
    if spec.display == "none" and spec.serial.enabled and any(n.boot for n in spec.nics):
        # No display: SeaBIOS writes its screen, and so iPXE's progress, to the serial port.
        machine += ",graphics=off"
    return [
        "-machine",
        machine,
        "-accel",
        vm.caps.accel,
        "-cpu",
        _cpu_model(spec, vm.caps),
        "-m",
        str(spec.memory // MiB),
        "-smp",
        str(spec.vcpus),
    ]


def _boot(vm: _Vm) -> list[str]:
    """Kernel, initrd and command line for a direct boot; OVMF flash nodes for UEFI.

    SeaBIOS needs nothing: it is the pc and q35 default. An uncompressed ELF kernel with a
    PVH note boots through PVH with nothing more here. ``-kernel``, ``-initrd`` and ``-append``
    take their value whole (no QemuOpts parsing), so they are not escaped.

    :raise HostError: UEFI is asked for and the host has no OVMF.
    :raise ValueError: UEFI is asked for and the paths have no variable store.
    """
    boot = vm.spec.boot
    if boot.kind == "kernel":
        assert boot.kernel is not None  # the spec guarantees it for kind "kernel"
        argv = ["-kernel", boot.kernel]
        if boot.initrd is not None:
            argv += ["-initrd", boot.initrd]
        if boot.cmdline:
            argv += ["-append", boot.cmdline]
        return argv
    if boot.firmware == "bios":
        return []
    if vm.caps.ovmf_code is None:
        raise HostError("UEFI boot needs OVMF firmware; install the ovmf package")
    if vm.paths.ovmf_vars is None:
        raise ValueError(f"vm {vm.spec.name!r}: UEFI boot needs paths.ovmf_vars")
    return [
        *_raw_node(_FW_CODE, vm.caps.ovmf_code, read_only=True),
        *_raw_node(_FW_VARS, vm.paths.ovmf_vars, read_only=False),
    ]


def _raw_node(name: str, path: str, *, read_only: bool) -> list[str]:
    """A raw image as a ``file`` node and a ``raw`` node named ``name`` (flash, the seed)."""
    file_node = f"{name}.file"
    return [
        "-blockdev",
        _json({"driver": "file", "filename": path, "node-name": file_node, "read-only": read_only}),
        "-blockdev",
        _json({"driver": "raw", "file": file_node, "node-name": name, "read-only": read_only}),
    ]


def _node_name(disk: str, depth: int, kind: Literal["file", "fmt"]) -> str:
    """The node name of one layer of a disk: ``<disk>.<depth>.<kind>``, depth 0 the top.

    A disk name has no ``.``, so these never collide across disks or with the flash nodes.

    :raise ValueError: the name breaks QEMU's node-name rules (a chain a billion layers deep).
    """
    name = f"{disk}.{depth}.{kind}"
    if not NODE_NAME.match(name):
        raise ValueError(f"node name {name!r} breaks QEMU's rules")
    return name


def _disk(vm: _Vm, index: int, disk: DiskSpec) -> list[str]:
    """One disk: its node chain, deepest layer first (a node must exist before it is named as
    a backing), then its virtio-blk device.

    :raise ValueError: the paths have no chain for the disk, or a raw layer has layers below
        it (raw cannot have a backing file).
    """
    files = vm.paths.disks.get(disk.name)
    if files is None:
        raise ValueError(f"vm {vm.spec.name!r}: paths.disks has no chain for disk {disk.name!r}")
    chain = (files.top, *files.backing)
    cache = _CACHE[disk.cache]
    argv: list[str] = []
    for depth in reversed(range(len(chain))):
        layer = chain[depth]
        common: dict[str, object] = {
            "cache": {"direct": cache.direct, "no-flush": cache.no_flush},
            "read-only": disk.readonly or depth > 0,
        }
        if depth == 0 and disk.discard and not disk.readonly:
            common["discard"] = "unmap"
        file_node = _node_name(disk.name, depth, "file")
        fmt: dict[str, object] = {
            "driver": layer.format,
            "file": file_node,
            "node-name": _node_name(disk.name, depth, "fmt"),
            **common,
        }
        below = depth + 1 < len(chain)
        if layer.format == "qcow2":
            fmt["backing"] = _node_name(disk.name, depth + 1, "fmt") if below else None
        elif below:
            raise ValueError(f"disk {disk.name!r}: raw layer {layer.path!r} cannot have a backing")
        file = {"driver": "file", "filename": layer.path, "node-name": file_node, **common}
        argv += ["-blockdev", _json(file), "-blockdev", _json(fmt)]
    device: dict[str, object] = {
        "driver": _DISK_DRIVER[vm.bus],
        "drive": _node_name(disk.name, 0, "fmt"),
        "id": f"disk-{disk.name}",
        "write-cache": "on" if cache.write_cache else "off",
    }
    if index == 0 and vm.spec.boot.kind == "firmware":
        device["bootindex"] = 1
    return argv + _device(vm.caps, device)


def overlay_nodes(disk: DiskSpec, path: str, tag: str) -> list[dict[str, object]]:
    """The ``blockdev-add`` options of a new top layer for a running VM's disk: its ``file``
    node, then its qcow2 node, opened with the disk's cache and discard settings and without
    a backing (``blockdev-snapshot`` gives it one).

    :param disk: the disk.
    :param path: the new qcow2 file.
    :param tag: what makes the node names unique in the VM (``<disk>.<tag>.file``/``.fmt``).
    :raise ValueError: the names break QEMU's node-name rules.
    """
    cache = _CACHE[disk.cache]
    common: dict[str, object] = {
        "cache": {"direct": cache.direct, "no-flush": cache.no_flush},
        "read-only": disk.readonly,
    }
    if disk.discard and not disk.readonly:
        common["discard"] = "unmap"
    names = [f"{disk.name}.{tag}.file", f"{disk.name}.{tag}.fmt"]
    for name in names:
        if not NODE_NAME.match(name):
            raise ValueError(f"node name {name!r} breaks QEMU's rules")
    file = {"driver": "file", "filename": path, "node-name": names[0], **common}
    fmt = {"driver": "qcow2", "file": names[0], "node-name": names[1], "backing": None, **common}
    return [file, fmt]


def _seed(vm: _Vm) -> list[str]:
    """The cloud-init seed: a raw, read-only virtio disk (cloud-init finds it by its label).

    :raise ValueError: the spec asks for a seed and the paths have none.
    """
    if not vm.spec.seed:
        return []
    if vm.paths.seed_iso is None:
        raise ValueError(f"vm {vm.spec.name!r}: the spec has a seed and paths.seed_iso is None")
    device = {"driver": _DISK_DRIVER[vm.bus], "drive": _SEED, "id": _SEED}
    return [*_raw_node(_SEED, vm.paths.seed_iso, read_only=True), *_device(vm.caps, device)]


def cdrom_medium(path: str, node: str = CDROM_NODE) -> list[dict[str, object]]:
    """The block nodes of an ISO in the CD-ROM drive, the ``file`` node first: raw and
    read-only, both drivers named. ``blockdev-add`` takes the same dictionaries at run time.

    :param path: the ISO's host path.
    :param node: the ``raw`` node's name; the ``file`` node's is it with ``.file``.
    """
    file_node = f"{node}.file"
    return [
        {"driver": "file", "filename": path, "node-name": file_node, "read-only": True},
        {"driver": "raw", "file": file_node, "node-name": node, "read-only": True},
    ]


def _cdrom(vm: _Vm) -> list[str]:
    """The removable CD-ROM drive (``ide-cd``), with its medium's nodes when it holds one.

    An empty drive has no ``drive`` property: its tray is closed and empty, and a medium can be
    inserted later over QMP.
    """
    cdrom = vm.spec.cdrom
    if cdrom is None:
        return []
    argv: list[str] = []
    device: dict[str, object] = {"driver": "ide-cd", "id": CDROM_DEVICE}
    if cdrom.path is not None:
        for node in cdrom_medium(cdrom.path):
            argv += ["-blockdev", _json(node)]
        device["drive"] = CDROM_NODE
    if cdrom.boot:
        device["bootindex"] = 0
    return argv + _device(vm.caps, device)


def _volume(vm: _Vm, dev: str, layer: ImageLayer) -> list[str]:
    """An attached volume: the nodes and device that hotplug would add (same ids)."""
    plug = plan_plug(dev, layer, _DISK_DRIVER[vm.bus])
    argv: list[str] = []
    for node in plug.blockdevs:
        argv += ["-blockdev", _json(node)]
    return argv + _device(vm.caps, plug.device)


def usb_plug(device: UsbDeviceSpec, layer: ImageLayer | None = None) -> Plug:
    """The nodes and device of one USB device on the controller's bus; ``device_add`` and
    ``blockdev-add`` take the same dictionaries at run time.

    :param layer: a ``usb-storage`` device's volume file (its nodes are the volume's, as on
        virtio, :func:`~corral.qemu.volume_nodes.plan_plug`).
    :raise ValueError: a ``usb-storage`` device without its file.
    """
    bus = f"{USB_CONTROLLER}.0"
    if device.device == "usb-host":
        ids = {"vendorid": device.vendorid, "productid": device.productid}
        return Plug((), {"driver": "usb-host", "id": device.id, "bus": bus, **ids})
    if device.device != "usb-storage":
        return Plug((), {"driver": device.device, "id": device.id, "bus": bus})
    if layer is None:
        raise ValueError(f"usb-storage {device.id!r} needs its volume's file")
    plug = plan_plug(device.id, layer, "usb-storage")
    return Plug(plug.blockdevs, {**plug.device, "bus": bus})


def _usb(vm: _Vm) -> list[str]:
    """A ``qemu-xhci`` controller and its devices, when the spec has USB devices.

    A ``usb-storage`` device whose volume is no longer attached (detached as a volume while
    the VM was stopped) is left out: the volume's record decides.
    """
    if not vm.spec.usb:
        return []
    argv = _device(vm.caps, {"driver": "qemu-xhci", "id": USB_CONTROLLER})
    for device in vm.spec.usb:
        layer = vm.paths.volumes.get(device.id)
        if device.device == "usb-storage" and layer is None:
            continue
        plug = usb_plug(device, layer)
        for node in plug.blockdevs:
            argv += ["-blockdev", _json(node)]
        argv += _device(vm.caps, plug.device)
    return argv


def _nic(vm: _Vm, index: int) -> list[str]:
    """One NIC: its backend (user-mode NAT, or a network's tap) and its card, as hotplug
    would add them (:func:`corral.qemu.nic_nodes.plan_nic`).

    :raise InvalidInput: the model needs PCI and the machine has none.
    """
    plug = plan_nic(vm.spec, index, vm.bus, vhost_net=vm.caps.vhost_net)
    return ["-netdev", _json(plug.netdev), *_device(vm.caps, plug.device)]


def _serial(vm: _Vm) -> list[str]:
    """The serial console: a listening socket for one client, everything logged to a file."""
    if not vm.spec.serial.enabled:
        return []
    chardev = (
        f"socket,id={_SERIAL_CHARDEV},path={_opt(_socket(vm.paths.serial_socket))},server=on,"
        f"wait=off,logfile={_opt(vm.paths.serial_log)},logappend=on"
    )
    device = {"driver": "isa-serial", "chardev": _SERIAL_CHARDEV, "id": "serial0"}
    return ["-chardev", chardev, *_device(vm.caps, device)]


def _display(vm: _Vm) -> list[str]:
    """No display at all; VNC on a UNIX socket or loopback; or a front end of the host
    (``curses``, ``sdl``, ``gtk``); each but the first with one video device.

    ``-nodefaults`` already leaves the VM without VGA, so ``-vga none`` is never needed. The
    VNC address goes behind an explicit ``vnc=``: as an implied first value, a path with a
    ``=`` in it would be read as a key. With password auth QEMU reads the password from the
    VM's ``vnc-password`` file through a ``secret`` object, never from the command line.
    """
    vnc = vm.spec.vnc
    video = {"driver": _VIDEO_DRIVER[vm.bus], "id": "video0"}
    if vm.spec.display in LOCAL_DISPLAYS:
        return ["-display", vm.spec.display, *_device(vm.caps, video)]
    if vnc is None:
        return ["-display", "none"]
    if vnc.listen == "unix":
        address = f"unix:{_opt(_socket(vm.paths.vnc_socket))}"
    else:
        address = f"127.0.0.1:{vnc.display}"
    if not vnc.password:
        return ["-vnc", f"vnc={address}", *_device(vm.caps, video)]
    secret = {
        "qom-type": "secret",
        "id": VNC_SECRET,
        "file": vm.paths.vnc_password,
        "format": "raw",
    }
    return [
        "-object",
        _json(secret),
        "-vnc",
        f"vnc={address},password-secret={VNC_SECRET}",
        *_device(vm.caps, video),
    ]
