"""Attaching volumes to VMs, detaching them, and growing them.

On a VM that is not running, each is a change of record (and, for a resize, ``qemu-img
resize`` of the file): an attached volume is on the VM's command line from its next start
(:func:`corral.compute.records.attached_volumes`). On a running (or paused) VM it is
hotplug as well, with the nodes and device of :mod:`corral.qemu.volume_nodes`:

* attach: ``blockdev-add`` (file node, then format node), then ``device_add``; a failure
  removes what was added, and the record is unchanged;
* detach: ``device_del``, then the guest's acknowledgement (``DEVICE_DELETED``) within a
  deadline, then ``blockdev-del``; a guest that does not acknowledge in time leaves the
  volume attached, recorded and usable (:class:`~corral.errors.GuestTimeout`). The request
  stays with the guest: should it release the device later, the next detach finds it gone
  and completes;
* resize: ``block_resize`` on the volume's format node; the guest sees the new size.

A volume attaches to a VM of its own project, and to one VM at a time (the record is
claimed by a conditional ``UPDATE``, so of two concurrent attaches one wins). Each operation
holds the VM's lock, as its starts and stops do, and is in the audit log.

:func:`plan_mode` is the pure rule of what an operation does in a VM's state.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Final, Literal

from sqlalchemy import update
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal
from corral.access.quotas import Demand, reserve
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import holding
from corral.compute.state import VmState
from corral.compute.volumes import (
    VolumeView,
    _attached_name,
    _check_capacity,
    _file,
    _project_name,
    _view_of,
    find_volume,
)
from corral.errors import (
    Conflict,
    GuestTimeout,
    InUse,
    InvalidInput,
    MonitorError,
    NotFound,
    StateError,
)
from corral.qemu.monitor import Monitor
from corral.qemu.paths import ImageLayer
from corral.qemu.volume_nodes import Plug, device_id, format_node, plan_plug
from corral.spec.vm import NAME_PATTERN
from corral.storage.volumes import (
    check_growth,
    check_volume_format,
    grow_volume_file,
    parse_volume_size,
)
from corral.store.models import VmRow, VolumeRow

#: States in which a volume changes with the record alone (no QEMU runs).
COLD: Final = frozenset({VmState.DEFINED, VmState.SHUTOFF, VmState.CRASHED})
#: States in which QEMU runs and a volume changes by hotplug.
HOT: Final = frozenset({VmState.RUNNING, VmState.PAUSED})
#: Seconds a detach waits for the guest to release the device, by default and at most.
DETACH_TIMEOUT: Final = 10.0
MAX_DETACH_TIMEOUT: Final = 120.0

Mode = Literal["cold", "hot"]


def plan_mode(vm: str, operation: str, state: VmState, machine: str, plugs: bool = True) -> Mode:
    """Whether ``operation`` on a volume of VM ``vm`` is a change of record (``cold``) or
    a change of the running QEMU as well (``hot``).

    :param plugs: the operation plugs or unplugs a device (a resize does not).

    :raise StateError: the VM is between states (starting, stopping).
    :raise Conflict: the VM runs on a machine type whose bus takes no hot-plugged device
        (q35's PCIe root, microvm).
    """
    if state in COLD:
        return "cold"
    if state not in HOT:
        allowed = [s.value for s in VmState if s in COLD | HOT]
        raise StateError(vm, operation, state.value, allowed)
    if plugs and machine != "pc" and not machine.startswith("pc-"):
        raise Conflict(
            f"cannot {operation} vm {vm!r} while it runs: machine {machine!r} takes no "
            "hot-plugged disk; stop the VM first"
        )
    return "hot"


def check_timeout(seconds: float) -> float:
    """:raise InvalidInput: ``seconds`` is not in 1..:data:`MAX_DETACH_TIMEOUT`."""
    if not 1 <= seconds <= MAX_DETACH_TIMEOUT:
        raise InvalidInput("timeout", f"must be 1 to {MAX_DETACH_TIMEOUT:.0f} seconds")
    return seconds


def _plan(ctx: Corral, row: VolumeRow) -> Plug:
    return plan_plug(
        device_id(row.id), ImageLayer(str(_file(ctx, row)), check_volume_format(row.format))
    )


# -- attach ---------------------------------------------------------------------------------


def attach_volume(
    ctx: Corral, actor: Principal, name: str, vm: str, project: str | None = None
) -> VolumeView:
    """Attach a volume to a VM of its project: at its next start, or now if it runs.

    :raise NotFound: no such volume or VM, or not in a project ``actor`` sees.
    :raise Forbidden: ``actor``'s role may not change them.
    :raise InvalidInput: the VM is in another project (field ``vm``).
    :raise InUse: the volume is attached (naming the VM).
    :raise StateError: the VM is starting or stopping.
    :raise Conflict: the VM runs on a machine without hotplug.
    :raise MonitorError: QEMU refused the hotplug (nothing is left plugged).
    """
    detail = {"vm": vm}
    with (
        audited(ctx, actor, "volume.attach", "volume", name, project, detail) as op,
        _vm_held(ctx, vm),
    ):
        session = op.session
        row = find_volume(session, actor, name, project, Action.OPERATE)
        op.project = _project_name(session, row.project_id)
        vm_row = find_owned(session, actor, VmRow, "vm", vm, Action.OPERATE)
        if vm_row.project_id != row.project_id:
            raise InvalidInput(
                "vm",
                f"vm {vm!r} is in project {_project_name(session, vm_row.project_id)}; "
                f"volume {name!r} attaches only to VMs of project {op.project}",
            )
        if row.attached_to is not None:
            raise InUse("volume", name, [f"vm {_attached_name(session, row.attached_to)}"])
        record = records.wrap(ctx, vm_row)
        mode = plan_mode(vm, "attach a volume to", records.reconcile(record), record.spec.machine)
        _claim(session, row, name, vm_row.id)
        if mode == "hot":
            with Monitor(record.paths.qmp_socket) as mon:
                plug_in(mon, _plan(ctx, row))
        op.detail["hotplug"] = mode == "hot"
        return _view_of(ctx, session, row)


@contextlib.contextmanager
def _vm_held(ctx: Corral, vm: str) -> Iterator[None]:
    """VM ``vm``'s lock, for a name that may name no VM (a lock file is made only for a
    name a VM could have)."""
    if not re.match(NAME_PATTERN, vm):
        raise NotFound("vm", vm)
    with holding(ctx, vm):
        yield


def _claim(session: Session, row: VolumeRow, name: str, vm_id: str) -> None:
    """Record the attachment, if the volume is still detached.

    :raise InUse: another attach won (naming its VM).
    """
    done = session.execute(
        update(VolumeRow)
        .where(VolumeRow.id == row.id, VolumeRow.attached_to.is_(None))
        .values(attached_to=vm_id)
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)
    if getattr(done, "rowcount", 0) != 1:
        raise InUse("volume", name, [f"vm {_attached_name(session, row.attached_to)}"])


def plug_in(mon: Monitor, plug: Plug) -> None:
    """Add the volume's nodes and device; on failure, remove the nodes already added.

    :raise MonitorError: QEMU refused a step.
    """
    added: list[str] = []
    try:
        for node in plug.blockdevs:
            mon.blockdev_add(node)
            added.append(str(node["node-name"]))
        mon.device_add(plug.device)
    except BaseException:
        for node_name in reversed(added):
            with contextlib.suppress(MonitorError):  # the refusal that got here is the news
                mon.blockdev_del(node_name)
        raise


# -- detach ---------------------------------------------------------------------------------


def detach_volume(
    ctx: Corral,
    actor: Principal,
    name: str,
    project: str | None = None,
    timeout: float = DETACH_TIMEOUT,
) -> VolumeView:
    """Detach a volume from its VM: from the record, and from QEMU if the VM runs.

    :param timeout: seconds the guest has to release the device.
    :raise NotFound: no such volume, or not in a project ``actor`` sees.
    :raise Forbidden: ``actor``'s role may not change it.
    :raise InvalidInput: ``timeout`` is out of range.
    :raise Conflict: it is not attached; or its VM is starting or stopping (StateError).
    :raise GuestTimeout: the guest did not release the device in time (it stays attached).
    """
    with audited(ctx, actor, "volume.detach", "volume", name, project) as op:
        check_timeout(timeout)
        with ctx.db.session() as peek:  # which VM's lock to take
            vm = _attached_name(peek, find_volume(peek, actor, name, project).attached_to)
        if vm is None:
            raise Conflict(f"volume {name!r} is not attached")
        op.detail["vm"] = vm
        with _vm_held(ctx, vm):
            session = op.session
            row = find_volume(session, actor, name, project, Action.OPERATE)
            op.project = _project_name(session, row.project_id)
            vm_row = session.get(VmRow, row.attached_to) if row.attached_to else None
            if vm_row is None or vm_row.name != vm:
                raise Conflict(f"volume {name!r} was detached or moved meanwhile; try again")
            record = records.wrap(ctx, vm_row)
            mode = plan_mode(
                vm, "detach a volume from", records.reconcile(record), record.spec.machine
            )
            if mode == "hot":
                with Monitor(record.paths.qmp_socket) as mon:
                    unplug(mon, _plan(ctx, row), vm, timeout)
            session.execute(
                update(VolumeRow)
                .where(VolumeRow.id == row.id, VolumeRow.attached_to == vm_row.id)
                .values(attached_to=None)
                .execution_options(synchronize_session=False)
            )
            session.refresh(row)
            op.detail["hotplug"] = mode == "hot"
            return _view_of(ctx, session, row)


def unplug(mon: Monitor, plug: Plug, vm: str, timeout: float) -> None:
    """Ask the guest to release the volume's device, wait for it, then remove its nodes.
    A device already gone (a guest that released it after an earlier timeout) is not an
    error.

    :raise GuestTimeout: no ``DEVICE_DELETED`` within ``timeout`` (nothing is removed).
    :raise MonitorError: QEMU refused a step.
    """
    dev = plug.device_id
    if mon.qom_exists(f"/machine/peripheral/{dev}"):
        try:
            mon.device_del(dev)
        except MonitorError as exc:
            if "in the process of unplug" not in exc.reason:  # an earlier request is pending
                raise
        if not mon.wait_device_deleted(dev, timeout):
            raise GuestTimeout(vm, f"release of volume device {dev} by the guest", timeout)
    present = {str(node.get("node-name")) for node in mon.query_named_block_nodes()}
    for node_name in plug.node_names:
        if node_name in present:
            mon.blockdev_del(node_name)


# -- resize ---------------------------------------------------------------------------------


def resize_volume(
    ctx: Corral, actor: Principal, name: str, size: str | int, project: str | None = None
) -> VolumeView:
    """Grow a volume, within its project's disk quota; the guest of a running VM it is
    attached to sees the new size at once.

    :param size: the new size (``"20G"`` or bytes), larger than the current one.
    :raise NotFound: no such volume, or not in a project ``actor`` sees.
    :raise Forbidden: ``actor``'s role may not change it.
    :raise InvalidInput: a bad size, or not larger (field ``size``).
    :raise QuotaExceeded: the project's disk quota would be exceeded.
    :raise InsufficientCapacity: the datastore cannot hold the growth.
    :raise StateError: its VM is starting or stopping.
    :raise ToolError: qemu-img failed (the volume keeps its size).
    """
    with audited(ctx, actor, "volume.resize", "volume", name, project, {"size": size}) as op:
        nbytes = parse_volume_size(size)
        op.detail["size"] = nbytes
        with ctx.db.session() as peek:  # which VM's lock to take, if any
            vm = _attached_name(peek, find_volume(peek, actor, name, project).attached_to)
        with _vm_held(ctx, vm) if vm is not None else contextlib.nullcontext():
            session = op.session
            row = find_volume(session, actor, name, project, Action.OPERATE)
            op.project = _project_name(session, row.project_id)
            if _attached_name(session, row.attached_to) != vm:
                raise Conflict(f"volume {name!r} was attached or detached meanwhile; try again")
            check_growth(row.size, nbytes)
            growth = nbytes - row.size
            _check_capacity(ctx, growth)
            reserve(session, row.project_id, Demand(instances=0, disk=growth))
            row.size = nbytes
            session.flush()
            mode: Mode = "cold"
            vm_row = session.get(VmRow, row.attached_to) if row.attached_to else None
            if vm_row is not None:
                record = records.wrap(ctx, vm_row)
                state = records.reconcile(record)
                mode = plan_mode(
                    vm_row.name, "resize a volume of", state, record.spec.machine, plugs=False
                )
                if mode == "hot":
                    with Monitor(record.paths.qmp_socket) as mon:
                        mon.block_resize(format_node(device_id(row.id)), nbytes)
            if mode == "cold":
                grow_volume_file(_file(ctx, row), check_volume_format(row.format), nbytes)
            op.detail["online"] = mode == "hot"
            return _view_of(ctx, session, row)
