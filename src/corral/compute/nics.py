"""A VM's network cards: adding one on a virtual network, removing one, and setting its link.

On a VM that is not running, each is a change of record: the spec's NICs and, for a NIC on
a network, its port (:mod:`corral.compute.addresses`: a MAC unique on the host, an address
unique in the network). On a running (or paused) VM it is hotplug as well, with the backend
and card of :mod:`corral.qemu.nic_nodes`, so a hot-plugged NIC is the card the next start's
command line has:

* add: the port, then the host (:func:`corral.compute.network_host.sync_host` makes the NIC's tap
  on the network's bridge and its DHCP lease), then ``netdev_add`` and ``device_add`` with
  the port's MAC. A failure anywhere undoes the rest: the backend is removed, the
  transaction (port and spec) rolled back, and the host synced back to the committed record,
  which takes the tap away;
* remove: ``device_del``, then the guest's acknowledgement (``DEVICE_DELETED``) within a
  deadline, then ``netdev_del``; then the port is released and the host synced (the tap and
  lease go). A guest that does not acknowledge in time leaves the NIC attached, recorded
  and working (:class:`~corral.errors.GuestTimeout`);
* link: ``set_link`` on the card; the spec records the state either way, so the next start
  has the carrier where it was left.

Hotplug needs a bus that takes hot-plugged cards: the ``pc`` family's PCI bus does; a
running q35 (PCIe root without hotplug ports) or microvm refuses with 409, naming the
machine. Each operation holds the VM's lock, as its starts and stops do, refuses a VM that
is starting or stopping (409 naming its state), and is in the audit log (``vm.nic.add``,
``vm.nic.remove``, ``vm.nic.link``), refusals included.

:func:`plan_add`, :func:`plan_remove`, :func:`plan_link` and :func:`check_hotplug` are the
pure rules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final, Literal, get_args

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.addresses import allocate_port
from corral.compute.context import Corral
from corral.compute.network_host import host_lock, host_restored, sync_host
from corral.compute.networks import find_network, project_name
from corral.compute.records import Vm
from corral.compute.state import Op, require
from corral.compute.volume_attach import DETACH_TIMEOUT, _vm_held, check_timeout
from corral.errors import Conflict, CorralError, GuestTimeout, InvalidInput, MonitorError, NotFound
from corral.net.plan import nic_tap
from corral.qemu.monitor import Monitor
from corral.qemu.nic_nodes import NicPlug, device_id, plan_nic
from corral.spec import parse
from corral.spec.vm import NicSpec, VmSpec
from corral.store.models import NetworkRow, PortRow, VmRow

#: The card models a NIC can have.
NicModel = Literal["virtio-net-pci", "e1000"]
MODELS: Final[tuple[str, ...]] = get_args(NicModel)
#: The most NICs a VM has (each takes a PCI slot).
MAX_NICS: Final = 8


@dataclass(frozen=True)
class NicView:
    """One NIC of a VM."""

    name: str
    #: ``user`` (user-mode NAT) or ``network``.
    kind: str
    model: str
    #: The network it is on; ``None`` for a ``user`` NIC.
    network: str | None
    mac: str
    #: Its address on a managed network; ``None`` otherwise.
    address: str | None
    #: The host's tap device of a ``network`` NIC.
    tap: str | None
    #: Carrier up (``True``) or down.
    link: bool


# -- pure rules -------------------------------------------------------------------------------


def check_model(model: str) -> NicModel:
    """:raise InvalidInput: (field ``model``) ``model`` is not a card corral offers."""
    if model not in MODELS:
        raise InvalidInput("model", f"{model!r} is not one of {', '.join(MODELS)}")
    return model  # type: ignore[return-value]  # checked against MODELS above


def check_hotplug(vm: str, operation: str, machine: str) -> None:
    """:raise Conflict: ``machine``'s bus takes no hot-plugged card (q35's PCIe root,
    microvm), naming it."""
    if machine != "pc" and not machine.startswith("pc-"):
        raise Conflict(
            f"cannot {operation} vm {vm!r} while it runs: machine {machine!r} takes no "
            "hot-plugged network card; stop the VM first"
        )


def free_name(spec: VmSpec) -> str:
    """The first ``net<N>`` no NIC of ``spec`` is called."""
    taken = {n.name for n in spec.nics}
    index = 0
    while f"net{index}" in taken:
        index += 1
    return f"net{index}"


def plan_add(spec: VmSpec, nic: NicSpec) -> VmSpec:
    """``spec`` with ``nic`` added last, validated whole.

    :raise Conflict: a NIC has that name, or the VM has :data:`MAX_NICS` already.
    :raise InvalidInput: the spec with it is not valid (naming the field).
    """
    if any(n.name == nic.name for n in spec.nics):
        raise Conflict(f"vm {spec.name!r} has a NIC {nic.name!r} already")
    if len(spec.nics) >= MAX_NICS:
        raise Conflict(f"vm {spec.name!r} has {len(spec.nics)} NICs, the most a VM has")
    data = spec.model_dump(mode="json")
    data["nics"] = [*data["nics"], nic.model_dump(mode="json")]
    return parse(VmSpec, data)


def nic_index(spec: VmSpec, name: str) -> int:
    """The position of NIC ``name`` in ``spec.nics``.

    :raise NotFound: the VM has no such NIC.
    """
    for index, nic in enumerate(spec.nics):
        if nic.name == name:
            return index
    raise NotFound("nic", name)


def plan_remove(spec: VmSpec, name: str) -> VmSpec:
    """``spec`` without NIC ``name`` (:raise NotFound: it has none)."""
    index = nic_index(spec, name)
    return spec.model_copy(update={"nics": spec.nics[:index] + spec.nics[index + 1 :]})


def plan_link(spec: VmSpec, name: str, up: bool) -> VmSpec:
    """``spec`` with NIC ``name``'s carrier ``up`` (:raise NotFound: it has no such NIC)."""
    index = nic_index(spec, name)
    nic = spec.nics[index].model_copy(update={"link": up})
    return spec.model_copy(update={"nics": (*spec.nics[:index], nic, *spec.nics[index + 1 :])})


# -- views ------------------------------------------------------------------------------------


def _ports(session: Session, vm_id: str) -> dict[str, PortRow]:
    return {p.nic: p for p in session.scalars(select(PortRow).where(PortRow.vm_id == vm_id))}


def _views(spec: VmSpec, ports: dict[str, PortRow]) -> list[NicView]:
    views = []
    for index, nic in enumerate(spec.nics):
        port = ports.get(nic.name)
        address = port.address if port is not None else (str(nic.ip) if nic.ip else None)
        views.append(
            NicView(
                name=nic.name,
                kind=nic.kind,
                model=nic.model,
                network=nic.network,
                mac=port.mac if port is not None else spec.nic_mac(index),
                address=address,
                tap=nic_tap(spec.uuid, nic.name) if nic.kind == "network" else None,
                link=nic.link,
            )
        )
    return views


def _view(session: Session, vm_row: VmRow, spec: VmSpec, name: str) -> NicView:
    return _views(spec, _ports(session, vm_row.id))[nic_index(spec, name)]


def list_nics(ctx: Corral, actor: Principal, vm: str) -> list[NicView]:
    """VM ``vm``'s NICs, in the order the guest sees them.

    :raise NotFound: no such VM, or not the caller's.
    """
    with ctx.db.session() as session:
        vm_row = find_owned(session, actor, VmRow, "vm", vm, Action.READ)
        return _views(VmSpec.model_validate_json(vm_row.spec), _ports(session, vm_row.id))


# -- operations -------------------------------------------------------------------------------


def _open(session: Session, ctx: Corral, actor: Principal, vm: str) -> tuple[VmRow, Vm]:
    """VM ``vm``'s row and reconciled record, once ``actor`` may operate it and its state
    allows a NIC change.

    :raise NotFound: no such VM, or not the caller's.
    :raise StateError: the VM is starting or stopping.
    """
    vm_row = find_owned(session, actor, VmRow, "vm", vm, Action.OPERATE)
    record = records.wrap(ctx, vm_row)
    require(vm, Op.NIC, records.reconcile(record))
    return vm_row, record


def _save(session: Session, vm_row: VmRow, spec: VmSpec) -> None:
    session.execute(
        update(VmRow)
        .where(VmRow.id == vm_row.id)
        .values(spec=spec.model_dump_json())
        .execution_options(synchronize_session=False)
    )


def _plan(ctx: Corral, spec: VmSpec, name: str) -> NicPlug:
    return plan_nic(spec, nic_index(spec, name), "pci", vhost_net=ctx.caps.vhost_net)


def plug_in(mon: Monitor, plug: NicPlug) -> None:
    """Add the NIC's backend, then its card; on failure, remove the backend again.

    :raise MonitorError: QEMU refused a step.
    """
    mon.execute("netdev_add", plug.netdev)
    try:
        mon.device_add(plug.device)
    except BaseException:
        with contextlib.suppress(MonitorError):  # the refusal that got here is the news
            mon.execute("netdev_del", {"id": plug.netdev_id})
        raise


def unplug(mon: Monitor, plug: NicPlug, vm: str, timeout: float) -> None:
    """Ask the guest to release the NIC's card, wait for it, then remove the backend. A card
    already gone (a guest that released it after an earlier timeout) is not an error.

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
            raise GuestTimeout(vm, f"release of network card {dev} by the guest", timeout)
    try:
        mon.execute("netdev_del", {"id": plug.netdev_id})
    except MonitorError as exc:
        if "not found" not in exc.reason.lower():  # removed by an earlier attempt
            raise


def add_nic(
    ctx: Corral,
    actor: Principal,
    vm: str,
    network: str,
    ip: str | None = None,
    model: str = "virtio-net-pci",
) -> NicView:
    """Add a NIC on ``network`` to VM ``vm``: from its next start, and at once if it runs.

    :param network: a network of the VM's project.
    :param ip: a fixed address in a managed network's subnet; the lowest free one if
        ``None``.
    :param model: ``virtio-net-pci`` or ``e1000``.
    :raise NotFound: no such VM or network, or not the caller's, or the network is of
        another project than the VM's.
    :raise Forbidden: the caller's role may not change the VM.
    :raise InvalidInput: a bad ``model`` or ``ip`` (named).
    :raise StateError: the VM is starting or stopping.
    :raise Conflict: the address is taken or none is free; the VM has the most NICs; it
        runs on a machine without hotplug.
    :raise MonitorError: QEMU refused the hotplug (nothing is left: no port, no tap).
    """
    detail: dict[str, object] = {"network": network, "model": model}
    if ip is not None:
        detail["ip"] = ip
    with (
        host_restored(ctx) as host,
        audited(ctx, actor, "vm.nic.add", "vm", vm, None, detail) as op,
        _vm_held(ctx, vm),
        host_lock(ctx),
    ):
        card = check_model(model)
        session = op.session
        vm_row, record = _open(session, ctx, actor, vm)
        op.project = project_name(session, vm_row.project_id)
        net_row: NetworkRow = find_network(session, actor, network)
        if net_row.project_id != vm_row.project_id:  # a VM reaches its project's only
            raise NotFound("network", network)
        active = record.state.active
        if active:
            check_hotplug(vm, "add a NIC to", record.spec.machine)
        name = free_name(record.spec)
        port = allocate_port(session, vm_row, name, net_row, ip=ip)
        fixed = None if ip is None or port.address is None else IPv4Address(port.address)
        nic = NicSpec(
            name=name, kind="network", model=card, network=network, mac=port.mac, ip=fixed
        )
        spec = plan_add(record.spec, nic)
        _save(session, vm_row, spec)
        op.detail.update(nic=name, mac=port.mac, address=port.address, hotplug=active)
        host.sync(session)
        if active:
            with Monitor(record.paths.qmp_socket) as mon:
                plug_in(mon, _plan(ctx, spec, name))
        return _view(session, vm_row, spec, name)


def remove_nic(
    ctx: Corral, actor: Principal, vm: str, name: str, timeout: float = DETACH_TIMEOUT
) -> NicView:
    """Remove NIC ``name`` from VM ``vm``: from QEMU if it runs, then its port, tap and
    lease.

    :param timeout: seconds the guest has to release the card.
    :raise NotFound: no such VM or NIC, or not the caller's.
    :raise Forbidden: the caller's role may not change the VM.
    :raise InvalidInput: ``timeout`` is out of range.
    :raise StateError: the VM is starting or stopping.
    :raise Conflict: it runs on a machine without hotplug.
    :raise GuestTimeout: the guest did not release the card in time (it stays, and works).
    """
    with (
        audited(ctx, actor, "vm.nic.remove", "vm", vm, None, {"nic": name}) as op,
        _vm_held(ctx, vm),
        host_lock(ctx),
    ):
        check_timeout(timeout)
        session = op.session
        vm_row, record = _open(session, ctx, actor, vm)
        op.project = project_name(session, vm_row.project_id)
        view = _view(session, vm_row, record.spec, name)
        spec = plan_remove(record.spec, name)
        active = record.state.active
        op.detail["hotplug"] = active
        if active:
            check_hotplug(vm, "remove a NIC from", record.spec.machine)
            with Monitor(record.paths.qmp_socket) as mon:
                unplug(mon, _plan(ctx, record.spec, name), vm, timeout)
        port = _ports(session, vm_row.id).get(name)
        if port is not None:
            session.delete(port)
            session.flush()
        _save(session, vm_row, spec)
        try:
            sync_host(ctx, session)
        except CorralError as exc:
            # The card is gone from the guest: the record must say so. The tap left behind
            # is taken by the next sync of the host.
            op.detail["host"] = str(exc)
        return view


def set_link(ctx: Corral, actor: Principal, vm: str, name: str, up: bool) -> NicView:
    """Set NIC ``name``'s carrier: recorded for the next start, and at once if it runs.

    :raise NotFound: no such VM or NIC, or not the caller's.
    :raise Forbidden: the caller's role may not change the VM.
    :raise StateError: the VM is starting or stopping.
    :raise MonitorError: QEMU refused (the record is unchanged).
    """
    detail = {"nic": name, "link": up}
    with audited(ctx, actor, "vm.nic.link", "vm", vm, None, detail) as op, _vm_held(ctx, vm):
        session = op.session
        vm_row, record = _open(session, ctx, actor, vm)
        op.project = project_name(session, vm_row.project_id)
        spec = plan_link(record.spec, name, up)
        _save(session, vm_row, spec)
        active = record.state.active
        op.detail["live"] = active
        if active:
            with Monitor(record.paths.qmp_socket) as mon:
                mon.execute("set_link", {"name": device_id(name), "up": up})
        return _view(session, vm_row, spec, name)
