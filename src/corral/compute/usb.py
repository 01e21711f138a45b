"""USB devices of a VM: QEMU's tablet and keyboard, and volumes as USB mass storage.

A VM with any USB device has a ``qemu-xhci`` controller on its command line
(:func:`corral.qemu.argv.usb_plug`). The spec records the devices, so a restart keeps them.
On a VM that is not running, adding or removing one is a change of record; on a running
(or paused) VM it is hotplug as well (``device_add``; ``device_del`` and the guest's
``DEVICE_DELETED``). A controller cannot be hot-plugged: a VM that started without USB
devices has none, and gets its first USB device while stopped.

A device's id is its kind and a token of 8 random hex digits drawn once (``usb-tablet-
1a2b3c4d``), never a counter. A ``usb-storage`` device is a volume of the VM's project,
recorded as attached to the VM; its id and block nodes are the volume's own
(:mod:`corral.qemu.volume_nodes`), so detaching the volume unplugs it as well. Host USB
passthrough (``usb-host``) is refused: it would hand a host device to a guest.

:func:`plan_add` and :func:`plan_remove` are the pure rules; :func:`add_usb` and
:func:`remove_usb` apply them under the VM's lock, in the audit log (``vm.usb.add``,
``vm.usb.remove``), refusals included.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final, get_args

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.records import Vm
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
from corral.errors import Conflict, InUse, InvalidInput, NotFound
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


# -- pure rules -------------------------------------------------------------------------------


def check_kind(device: str, volume: str | None) -> UsbKind:
    """``device`` as a device kind, checked against ``volume``.

    :raise InvalidInput: (field ``device``) ``usb-host`` or an unknown kind; (field
        ``volume``) a volume for a device that takes none, or none for ``usb-storage``.
    """
    if device == "usb-host":
        raise InvalidInput(
            "device",
            "host USB passthrough (usb-host) is not supported on this host: it would hand a "
            f"host device to a guest; use one of {', '.join(KINDS)}",
        )
    if device not in KINDS:
        raise InvalidInput("device", f"{device!r} is not one of {', '.join(KINDS)}")
    if device == "usb-storage" and volume is None:
        raise InvalidInput("volume", "usb-storage needs a volume of the VM's project")
    if device != "usb-storage" and volume is not None:
        raise InvalidInput("volume", f"{device} takes no volume")
    return device  # type: ignore[return-value]  # checked against KINDS above


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
    :raise Conflict: the device (the volume, for ``usb-storage``) is on the VM already.
    """
    if spec.machine == "microvm":
        raise InvalidInput("device", "machine 'microvm' has no PCI bus for a USB controller")
    if any(u.id == device.id for u in spec.usb):
        raise Conflict(f"vm {spec.name!r} has USB device {device.id} already")
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
    return UsbView(device.id, device.device, name)


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


def list_usb(ctx: Corral, actor: Principal, vm: str) -> list[UsbView]:
    """VM ``vm``'s USB devices, in the order they were added.

    :raise NotFound: no such VM, or not the caller's.
    """
    with ctx.db.session() as session:
        vm_row = find_owned(session, actor, VmRow, "vm", vm, Action.READ)
        spec = _live(session, vm_row, VmSpec.model_validate_json(vm_row.spec))
        return [_view(session, u) for u in spec.usb]


def add_usb(
    ctx: Corral, actor: Principal, vm: str, device: str, volume: str | None = None
) -> UsbView:
    """Add a USB device to VM ``vm``: from its next start, and at once if it runs.

    :param device: ``usb-tablet``, ``usb-kbd`` or ``usb-storage``.
    :param volume: for ``usb-storage``, a detached volume of the VM's project.
    :raise NotFound: no such VM or volume, or not the caller's.
    :raise Forbidden: the caller's role may not change them.
    :raise InvalidInput: a bad ``device`` (``usb-host`` included) or ``volume``, a volume of
        another project, no port left, or a microvm.
    :raise InUse: the volume is attached.
    :raise StateError: the VM is starting or stopping.
    :raise Conflict: the VM runs without a USB controller.
    :raise MonitorError: QEMU refused the hotplug (nothing is left plugged).
    """
    asked = {"device": device, **({"volume": volume} if volume is not None else {})}
    with audited(ctx, actor, "vm.usb.add", "vm", vm, None, asked) as op, _vm_held(ctx, vm):
        kind = check_kind(device, volume)
        session = op.session
        vm_row, record = _open(session, ctx, actor, vm)
        op.project = _project_name(session, vm_row.project_id)
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
