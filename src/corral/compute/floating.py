"""Floating IPs (elastic IPs): addresses of the host's floating pool, allocated to a project
and associated with a NIC of one of its VMs.

A floating IP is a row (:class:`~corral.store.models.FloatingIpRow`); the host follows the
database as for networks (:func:`corral.compute.network_host.sync_host`): every allocated address
lives on the floating interface, and an associated one is translated to its guest's address
and back (:mod:`corral.net.floating`). Associating, disassociating and moving change only the
host's nftables table: neither VM is restarted, and a VM in any state may be associated.

* The pool is ``[network] floating_pool`` of ``corral.toml``; an allocation takes its lowest
  free address (409 when there is no pool or it is exhausted).
* A floating IP of a project the caller is not in answers :class:`~corral.errors.NotFound`,
  as one that does not exist; it is associated only with a VM of its own project.
* Moving a floating IP is a disassociation and an association; the connections of the old
  mapping are removed from conntrack (they would otherwise keep reaching the old guest).

Every change, allowed or refused, is in the audit log.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, authorize
from corral.access.projects import find_project
from corral.access.scope import find_owned, visible
from corral.compute.context import Corral
from corral.compute.network_host import (
    host_enabled,
    host_lock,
    host_networking,
    host_restored,
    network_of,
    sync_host,
)
from corral.compute.networks import project_name
from corral.compute.settings import load_settings
from corral.errors import Conflict, NotFound
from corral.net.floating import free_address
from corral.store.models import DEFAULT_PROJECT, FloatingIpRow, NetworkRow, PortRow, VmRow, as_utc

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloatingIpView:
    """A floating IP as the listing shows it."""

    address: str
    project: str
    #: The VM and NIC it is associated with; ``None`` when it is not.
    vm: str | None
    nic: str | None
    #: The guest's address it is translated to.
    guest: str | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _address(text: str) -> str:
    """``text`` as a canonical IPv4 address; :raise NotFound: it is none."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise NotFound("floating ip", text) from None


def find_floating(
    session: Session, principal: Principal, address: str, action: Action = Action.READ
) -> FloatingIpRow:
    """The floating IP ``address``, if ``principal`` may take ``action`` on it.

    :raise NotFound: no such floating IP, or not in a project ``principal`` sees.
    :raise Forbidden: ``principal`` sees it but may not take ``action``.
    """
    canonical = _address(address)
    query = select(FloatingIpRow).where(
        FloatingIpRow.address == canonical, visible(principal, FloatingIpRow.project_id)
    )
    row = session.scalars(query).first()
    if row is None:
        raise NotFound("floating ip", address)
    authorize(principal, action, "floating ip", address, row.project_id)
    return row


def _view(session: Session, row: FloatingIpRow) -> FloatingIpView:
    vm = nic = guest = None
    if row.port_id is not None:
        found = session.execute(
            select(PortRow, VmRow.name)
            .join(VmRow, VmRow.id == PortRow.vm_id)
            .where(PortRow.id == row.port_id)
        ).first()
        if found is not None:
            port, vm = found
            nic, guest = port.nic, port.address
    return FloatingIpView(
        address=row.address,
        project=project_name(session, row.project_id),
        vm=vm,
        nic=nic,
        guest=guest,
        created_at=as_utc(row.created_at).isoformat(),
    )


def list_floating_ips(
    ctx: Corral, principal: Principal, project: str | None = None
) -> list[FloatingIpView]:
    """The floating IPs ``principal`` sees, by address.

    :raise NotFound: ``project`` names no project ``principal`` sees.
    """
    with ctx.db.session() as session:
        query = select(FloatingIpRow).where(visible(principal, FloatingIpRow.project_id))
        if project is not None:
            project_id = find_project(session, principal, project).id
            query = query.where(FloatingIpRow.project_id == project_id)
        rows = list(session.scalars(query))
        rows.sort(key=lambda r: ipaddress.IPv4Address(r.address))
        return [_view(session, r) for r in rows]


def _apply(ctx: Corral, session: Session) -> None:
    sync_host(ctx, session)


def _forget(ctx: Corral, address: str) -> None:
    """Remove the connections of ``address``'s old mapping from conntrack (best effort: a
    host without conntrack support keeps them until they time out)."""
    if not host_enabled(ctx):
        return
    try:
        host_networking().forget_connections(ipaddress.IPv4Address(address))
    except Exception:  # the mapping is gone already; old connections time out
        _log.exception("removing the connections of floating ip %s failed", address)


def allocate(ctx: Corral, actor: Principal, project: str | None = None) -> FloatingIpView:
    """Allocate the lowest free address of the floating pool to ``project`` (``default``
    when ``None``).

    :raise NotFound: no such project, or ``actor`` is no member of it.
    :raise Forbidden: ``actor``'s role may not create.
    :raise Conflict: there is no floating pool, or it is exhausted.
    :raise InvalidInput: ``corral.toml`` is not valid (naming the file and key).
    """
    project = DEFAULT_PROJECT if project is None else project
    pool = load_settings(ctx.home).network.floating_pool
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(ctx, actor, "floating_ip.allocate", "floating ip", "-", project) as op,
    ):
        project_id = find_project(op.session, actor, project).id
        authorize(actor, Action.CREATE, "project", project, project_id)
        taken = {
            ipaddress.IPv4Address(a) for a in op.session.scalars(select(FloatingIpRow.address))
        }
        address = str(free_address(pool, taken))
        op.detail["address"] = address
        row = FloatingIpRow(id=str(uuid.uuid4()), address=address, project_id=project_id)
        op.session.add(row)
        try:
            op.session.flush()
        except IntegrityError as exc:
            raise Conflict(f"floating ip {address} was allocated meanwhile") from exc
        host.sync(op.session)
        return _view(op.session, row)


def _port_of(session: Session, vm: VmRow, nic: str | None) -> PortRow:
    """VM ``vm``'s port on a managed network (NIC ``nic``, else its first such NIC).

    :raise Conflict: it has no such port.
    """
    query = (
        select(PortRow, NetworkRow)
        .join(NetworkRow, NetworkRow.id == PortRow.network_id)
        .where(PortRow.vm_id == vm.id)
        .order_by(PortRow.nic)
    )
    for port, network in session.execute(query):
        if (nic is None or port.nic == nic) and network_of(network).managed and port.address:
            return port
    what = f"NIC {nic!r}" if nic is not None else "NIC"
    raise Conflict(f"vm {vm.name!r} has no {what} on a managed network (nat or isolated)")


def _where(session: Session, port_id: str) -> str:
    found = session.execute(
        select(PortRow.nic, VmRow.name)
        .join(VmRow, VmRow.id == PortRow.vm_id)
        .where(PortRow.id == port_id)
    ).first()
    return "a NIC" if found is None else f"vm {found[1]!r} NIC {found[0]!r}"


def associate(
    ctx: Corral, actor: Principal, address: str, vm: str, nic: str | None = None
) -> FloatingIpView:
    """Associate floating IP ``address`` with NIC ``nic`` of ``vm`` (its first NIC on a
    managed network when ``None``), in whatever state the VM is.

    :raise NotFound: no such floating IP or VM, or not in ``actor``'s projects.
    :raise Forbidden: ``actor``'s role may not operate.
    :raise Conflict: the floating IP is associated already (naming where), the VM is of
        another project, it has no such NIC on a managed network, or that NIC has a floating
        IP already.
    """
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(
            ctx, actor, "floating_ip.associate", "floating ip", address, None, {"vm": vm}
        ) as op,
    ):
        row = find_floating(op.session, actor, address, Action.OPERATE)
        op.project = project_name(op.session, row.project_id)
        if nic is not None:
            op.detail["nic"] = nic
        if row.port_id is not None:
            where = _where(op.session, row.port_id)
            raise Conflict(f"floating ip {row.address} is associated with {where} already")
        vm_row = find_owned(op.session, actor, VmRow, "vm", vm, Action.OPERATE)
        if vm_row.project_id != row.project_id:
            raise Conflict(
                f"vm {vm!r} is in project {project_name(op.session, vm_row.project_id)!r}, "
                f"floating ip {row.address} in {op.project!r}"
            )
        port = _port_of(op.session, vm_row, nic)
        holder = op.session.scalars(
            select(FloatingIpRow.address).where(FloatingIpRow.port_id == port.id)
        ).first()
        if holder is not None:
            raise Conflict(f"vm {vm!r} NIC {port.nic!r} has floating ip {holder} already")
        row.port_id = port.id
        try:
            op.session.flush()
        except IntegrityError as exc:
            raise Conflict(f"vm {vm!r} NIC {port.nic!r} was given a floating ip") from exc
        host.sync(op.session)
        return _view(op.session, row)


def disassociate(ctx: Corral, actor: Principal, address: str) -> FloatingIpView:
    """Disassociate floating IP ``address`` from its NIC (one not associated is left so),
    and remove the connections of the old mapping.

    :raise NotFound: no such floating IP, or not in ``actor``'s projects.
    :raise Forbidden: ``actor``'s role may not operate.
    """
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(ctx, actor, "floating_ip.disassociate", "floating ip", address) as op,
    ):
        row = find_floating(op.session, actor, address, Action.OPERATE)
        op.project = project_name(op.session, row.project_id)
        was = row.port_id
        if was is not None:
            op.detail["was"] = _where(op.session, was)
            row.port_id = None
            op.session.flush()
            host.sync(op.session)
        view = _view(op.session, row)
    if was is not None:
        _forget(ctx, view.address)
    return view


def release(ctx: Corral, actor: Principal, address: str) -> None:
    """Give floating IP ``address`` back to the pool, disassociating it first.

    :raise NotFound: no such floating IP, or not in ``actor``'s projects.
    :raise Forbidden: ``actor``'s role may not delete.
    """
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(ctx, actor, "floating_ip.release", "floating ip", address) as op,
    ):
        row = find_floating(op.session, actor, address, Action.DELETE)
        op.project = project_name(op.session, row.project_id)
        canonical = row.address
        if row.port_id is not None:
            op.detail["was"] = _where(op.session, row.port_id)
        op.session.delete(row)
        op.session.flush()
        host.sync(op.session)
    _forget(ctx, canonical)
