"""USB devices of a VM: QEMU's tablet and keyboard, volumes as USB mass storage, and host
USB devices passed through where the host's administrator allows it.

A VM with any USB device has a ``qemu-xhci`` controller on its command line
(:func:`corral.qemu.argv.usb_plug`). The spec records the devices, so a restart keeps them.
On a VM that is not running, adding or removing one is a change of record; on a running
(or paused) VM it is hotplug as well (``device_add``; ``device_del`` and the guest's
``DEVICE_DELETED``). A controller cannot be hot-plugged: a VM that started without USB
devices has none, and gets its first USB device while stopped.

A device's id is its kind and a token of 8 random hex digits drawn once (``usb-tablet-
1a2b3c4d``), never a counter. A ``usb-storage`` device is a volume of the VM's project,
recorded as attached to the VM; its id and block nodes are the volume's own
(:mod:`corral.qemu.volume_nodes`), so detaching the volume unplugs it as well.

Host USB passthrough (``usb-host``) hands a device of the host to a guest, so it takes two
consents: the caller is an admin (others get 403), and the device, named ``vendor:product``
in lower-case hex as ``lsusb`` shows it, is in ``host_allow`` of the ``[usb]`` section of
``corral.toml`` (see :mod:`corral.compute.settings`; others get 422 naming ``host`` and the
file). QEMU gets the two ids as integers (``vendorid``, ``productid``), never the caller's
text; a device that is not plugged in is waited for. The allow-list is checked again each
time a VM with such a device starts (:func:`check_host_devices`), so taking a device off
the list takes it from every VM, clones included.

:func:`plan_add` and :func:`plan_remove` are the pure rules; :func:`add_usb` and
:func:`remove_usb` apply them under the VM's lock, in the audit log (``vm.usb.add``,
``vm.usb.remove``), refusals included.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, get_args

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, require_admin
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.records import Vm
from corral.compute.settings import USB_ID_PATTERN, load_settings, settings_path
from corral.compute.state import Op, require
from corral.compute.volume_attach import (
    DETACH_TIMEOUT,
    _claim,
    _vm_held,
    check_timeout,
    plug_in,
    unplug,
)
from corral.compute.volumes import _project_name, find_volume
from corral.config import Home
from corral.errors import Conflict, InUse, InvalidInput, NotFound
from corral.host.usb import SYSFS_USB, HostUsbDevice, read_devices
from corral.qemu.argv import USB_CONTROLLER, usb_plug
from corral.qemu.monitor import Monitor
from corral.qemu.volume_nodes import device_id
from corral.spec.vm import UsbDeviceSpec, UsbKind, VmSpec
from corral.store.models import VmRow, VolumeRow

#: The device kinds one can add.
KINDS: Final[tuple[str, ...]] = get_args(UsbKind)
#: The USB 2 ports of QEMU's ``qemu-xhci`` controller, where these devices plug in.
MAX_DEVICES: Final = 4


@dataclass(frozen=True)
class UsbView:
    """One USB device of a VM."""

    id: str
    device: str
    #: The volume a ``usb-storage`` device presents; ``None`` for the others.
    volume: str | None = None
    #: The host device a ``usb-host`` device passes through (``vendor:product``).
    host: str | None = None


# -- pure rules -------------------------------------------------------------------------------


def check_kind(device: str, volume: str | None, host: str | None = None) -> UsbKind:
    """``device`` as a device kind, checked against ``volume`` and ``host``.

    :raise InvalidInput: (field ``device``) an unknown kind; (field ``volume``) a volume for
        a device that takes none, or none for ``usb-storage``; (field ``host``) a host device
        for a kind other than ``usb-host``, or none for it.
    """
    if device not in KINDS:
        raise InvalidInput("device", f"{device!r} is not one of {', '.join(KINDS)}")
    if device == "usb-storage" and volume is None:
        raise InvalidInput("volume", "usb-storage needs a volume of the VM's project")
    if device != "usb-storage" and volume is not None:
        raise InvalidInput("volume", f"{device} takes no volume")
    if device == "usb-host" and host is None:
        raise InvalidInput("host", "usb-host needs the host device, as vendor:product (046d:c52b)")
    if device != "usb-host" and host is not None:
        raise InvalidInput("host", f"{device} takes no host device")
    return device  # type: ignore[return-value]  # checked against KINDS above


def parse_host_id(host: str) -> tuple[int, int]:
    """``host`` (``vendor:product``, 4 lower-case hex digits each) as its two ids.

    :raise InvalidInput: (field ``host``) it is not of that form.
    """
    if not re.fullmatch(USB_ID_PATTERN, host):
        raise InvalidInput(
            "host", f"{host!r} is not vendor:product in lower-case hex, as lsusb shows (046d:c52b)"
        )
    vendor, product = host.split(":")
    return int(vendor, 16), int(product, 16)


def host_id(device: UsbDeviceSpec) -> str | None:
    """A ``usb-host`` device's ``vendor:product``; ``None`` for the other kinds."""
    if device.vendorid is None or device.productid is None:
        return None
    return f"{device.vendorid:04x}:{device.productid:04x}"


def check_host_allowed(actor: Principal, host: str, allow: tuple[str, ...], file: str) -> None:
    """Check ``actor`` may pass host device ``host`` through to a guest.

    :param allow: ``host_allow`` of the host's settings.
    :param file: the settings file, named in the refusal.
    :raise Forbidden: the actor is not an admin (passthrough is for admins only).
    :raise InvalidInput: (field ``host``) the device is not on the allow-list.
    """
    require_admin(actor, "host USB devices (usb-host passthrough is for admins only)")
    if host not in allow:
        raise InvalidInput(
            "host",
            f"host USB device {host} is not in host_allow of the [usb] section of {file}; "
            "the host's administrator adds it there to allow its passthrough",
        )


def check_host_devices(spec: VmSpec, allow: tuple[str, ...], file: str) -> None:
    """Check each ``usb-host`` device of ``spec`` is on the host's allow-list.

    :raise InvalidInput: (field ``usb``) naming the device and the setting.
    """
    for device in spec.usb:
        host = host_id(device)
        if host is not None and host not in allow:
            raise InvalidInput(
                "usb",
                f"vm {spec.name!r} has host USB device {host} ({device.id}), which is not in "
                f"host_allow of the [usb] section of {file}: add it there, or remove the "
                f"device (corral usb remove {spec.name} {device.id})",
            )


def check_host_devices_of(home: Home, spec: VmSpec) -> None:
    """:func:`check_host_devices` against the settings of ``home``; a start runs it.

    :raise InvalidInput: a device is not allowed, or the settings file is not valid.
    """
    if any(u.device == "usb-host" for u in spec.usb):
        allow = load_settings(home).usb.host_allow
        check_host_devices(spec, allow, str(settings_path(home)))


def new_id(kind: UsbKind, taken: set[str], volume_id: str | None = None) -> str:
    """A fresh id for a ``kind`` device: the volume's device id for ``usb-storage``, else the
    kind and 8 random hex digits not in ``taken``."""
    if kind == "usb-storage":
        assert volume_id is not None
        return device_id(volume_id)
    while (candidate := f"{kind}-{secrets.token_hex(4)}") in taken:
        pass
    return candidate


def plan_add(spec: VmSpec, device: UsbDeviceSpec) -> VmSpec:
    """``spec`` with ``device`` added.

    :raise InvalidInput: (field ``device``) the machine has no PCI bus for a controller, or
        the controller's ports are all taken.
    :raise Conflict: the device (the volume, for ``usb-storage``; the host device, for
        ``usb-host``) is on the VM already.
    """
    if spec.machine == "microvm":
        raise InvalidInput("device", "machine 'microvm' has no PCI bus for a USB controller")
    if any(u.id == device.id for u in spec.usb):
        raise Conflict(f"vm {spec.name!r} has USB device {device.id} already")
    host = host_id(device)
    if host is not None and any(host_id(u) == host for u in spec.usb):
        raise Conflict(f"vm {spec.name!r} has host USB device {host} already")
    if len(spec.usb) >= MAX_DEVICES:
        raise InvalidInput(
            "device", f"vm {spec.name!r} has {len(spec.usb)} USB devices, all its ports"
        )
    return spec.model_copy(update={"usb": (*spec.usb, device)})


def plan_remove(spec: VmSpec, usb_id: str) -> tuple[VmSpec, UsbDeviceSpec]:
    """``spec`` without the device ``usb_id``, and that device.

    :raise NotFound: the VM has no such USB device.
    """
    found = [u for u in spec.usb if u.id == usb_id]
    if not found:
        raise NotFound("usb device", usb_id)
    return spec.model_copy(update={"usb": tuple(u for u in spec.usb if u.id != usb_id)}), found[0]


# -- operations -------------------------------------------------------------------------------


def _live(session: Session, vm_row: VmRow, spec: VmSpec) -> VmSpec:
    """``spec`` without the ``usb-storage`` devices whose volume was detached meanwhile (as a
    volume, while the VM was stopped): the volume's record decides."""
    attached = set(session.scalars(select(VolumeRow.id).where(VolumeRow.attached_to == vm_row.id)))
    keep = tuple(u for u in spec.usb if u.volume is None or str(u.volume) in attached)
    return spec if keep == spec.usb else spec.model_copy(update={"usb": keep})


def _view(session: Session, device: UsbDeviceSpec) -> UsbView:
    name = None
    if device.volume is not None:
        name = session.scalars(
            select(VolumeRow.name).where(VolumeRow.id == str(device.volume))
        ).first()
    return UsbView(device.id, device.device, name, host_id(device))


def _save(session: Session, vm_row: VmRow, spec: VmSpec) -> None:
    session.execute(
        update(VmRow)
        .where(VmRow.id == vm_row.id)
        .values(spec=spec.model_dump_json())
        .execution_options(synchronize_session=False)
    )


def _open(session: Session, ctx: Corral, actor: Principal, vm: str) -> tuple[VmRow, Vm]:
    """VM ``vm``'s row and reconciled record, once ``actor`` may operate it and its state
    allows a USB change.

    :raise NotFound: no such VM, or not the caller's.
    :raise StateError: the VM is starting or stopping.
    """
    vm_row = find_owned(session, actor, VmRow, "vm", vm, Action.OPERATE)
    record = records.wrap(ctx, vm_row)
    require(vm, Op.USB, records.reconcile(record))
    return vm_row, record


def _check_controller(mon: Monitor, vm: str) -> None:
    """:raise Conflict: the running VM has no USB controller (it started without USB
    devices, and a controller cannot be hot-plugged)."""
    if not mon.qom_exists(f"/machine/peripheral/{USB_CONTROLLER}"):
        raise Conflict(
            f"vm {vm!r} runs without a USB controller (it started with no USB device) and "
            "a controller cannot be hot-plugged: stop it first"
        )


def list_host_usb(
    ctx: Corral, actor: Principal, root: Path = SYSFS_USB
) -> list[tuple[HostUsbDevice, bool]]:
    """The host's USB devices, each with whether it is on the passthrough allow-list.

    :param root: where sysfs lists USB devices.
    :raise Forbidden: the caller is not an admin.
    :raise InvalidInput: the settings file is not valid.
    """
    require_admin(actor, "host USB devices")
    allow = set(load_settings(ctx.home).usb.host_allow)
    return [(d, d.usb_id in allow) for d in read_devices(root)]


def list_usb(ctx: Corral, actor: Principal, vm: str) -> list[UsbView]:
    """VM ``vm``'s USB devices, in the order they were added.

    :raise NotFound: no such VM, or not the caller's.
    """
    with ctx.db.session() as session:
        vm_row = find_owned(session, actor, VmRow, "vm", vm, Action.READ)
        spec = _live(session, vm_row, VmSpec.model_validate_json(vm_row.spec))
        return [_view(session, u) for u in spec.usb]


def add_usb(
    ctx: Corral,
    actor: Principal,
    vm: str,
    device: str,
    volume: str | None = None,
    host: str | None = None,
) -> UsbView:
    """Add a USB device to VM ``vm``: from its next start, and at once if it runs.

    :param device: ``usb-tablet``, ``usb-kbd``, ``usb-storage`` or ``usb-host``.
    :param volume: for ``usb-storage``, a detached volume of the VM's project.
    :param host: for ``usb-host``, the host device as ``vendor:product``.
    :raise NotFound: no such VM or volume, or not the caller's.
    :raise Forbidden: the caller's role may not change them; ``usb-host`` by a non-admin.
    :raise InvalidInput: a bad ``device``, ``volume`` or ``host``, a volume of another
        project, a host device not on the allow-list, no port left, or a microvm.
    :raise InUse: the volume is attached.
    :raise StateError: the VM is starting or stopping.
    :raise Conflict: the VM runs without a USB controller.
    :raise MonitorError: QEMU refused the hotplug (nothing is left plugged).
    """
    asked = {"device": device, **({"volume": volume} if volume is not None else {})}
    if host is not None:
        asked["host"] = host
    with audited(ctx, actor, "vm.usb.add", "vm", vm, None, asked) as op, _vm_held(ctx, vm):
        kind = check_kind(device, volume, host)
        ids = parse_host_id(host) if host is not None else None
        session = op.session
        vm_row, record = _open(session, ctx, actor, vm)
        op.project = _project_name(session, vm_row.project_id)
        if host is not None:
            allow = load_settings(ctx.home).usb.host_allow
            check_host_allowed(actor, host, allow, str(settings_path(ctx.home)))
        spec = _live(session, vm_row, record.spec)
        volume_row = None
        if volume is not None:
            volume_row = find_volume(session, actor, volume, None, Action.OPERATE)
            if volume_row.project_id != vm_row.project_id:
                raise InvalidInput(
                    "volume",
                    f"volume {volume!r} is in project "
                    f"{_project_name(session, volume_row.project_id)}; vm {vm!r} takes "
                    f"volumes of project {op.project}",
                )
            if volume_row.attached_to is not None:
                raise InUse("volume", volume, ["a vm"])
        taken = {u.id for u in spec.usb}
        usb = UsbDeviceSpec(
            id=new_id(kind, taken, volume_row.id if volume_row else None),
            device=kind,
            volume=volume_row.id if volume_row else None,
            vendorid=ids[0] if ids else None,
            productid=ids[1] if ids else None,
        )
        spec = plan_add(spec, usb)
        if volume_row is not None and volume is not None:
            _claim(session, volume_row, volume, vm_row.id)
        _save(session, vm_row, spec)
        op.detail["id"] = usb.id
        op.detail["hotplug"] = record.state.active
        if record.state.active:
            layer = None
            if volume_row is not None:
                layer = records.attached_volumes(ctx, session, vm_row.id)[usb.id]
            with Monitor(record.paths.qmp_socket) as mon:
                _check_controller(mon, vm)
                plug_in(mon, usb_plug(usb, layer))
        return _view(session, usb)


def remove_usb(
    ctx: Corral, actor: Principal, vm: str, usb_id: str, timeout: float = DETACH_TIMEOUT
) -> UsbView:
    """Remove USB device ``usb_id`` from VM ``vm``: from its record, and from QEMU if it
    runs. A ``usb-storage`` device's volume is detached.

    :param timeout: seconds the guest has to release the device.
    :raise NotFound: no such VM or device, or not the caller's.
    :raise Forbidden: the caller's role may not change it.
    :raise InvalidInput: ``timeout`` is out of range.
    :raise StateError: the VM is starting or stopping.
    :raise GuestTimeout: the guest did not release the device in time (it stays).
    """
    detail = {"id": usb_id}
    with audited(ctx, actor, "vm.usb.remove", "vm", vm, None, detail) as op, _vm_held(ctx, vm):
        check_timeout(timeout)
        session = op.session
        vm_row, record = _open(session, ctx, actor, vm)
        op.project = _project_name(session, vm_row.project_id)
        spec, usb = plan_remove(_live(session, vm_row, record.spec), usb_id)
        view = _view(session, usb)
        op.detail["hotplug"] = record.state.active
        if record.state.active:
            layer = record.paths.volumes.get(usb.id)
            with Monitor(record.paths.qmp_socket) as mon:
                unplug(mon, usb_plug(usb, layer), vm, timeout)
        if usb.volume is not None:
            session.execute(
                update(VolumeRow)
                .where(VolumeRow.id == str(usb.volume), VolumeRow.attached_to == vm_row.id)
                .values(attached_to=None)
                .execution_options(synchronize_session=False)
            )
        _save(session, vm_row, spec)
        return view
