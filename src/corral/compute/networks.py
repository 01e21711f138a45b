"""Virtual networks as resources, and the ports guests' NICs have on them.

A network is a row (:class:`~corral.store.models.NetworkRow`) holding its
:class:`~corral.spec.net.NetworkSpec`; what the host has for it (bridge, dnsmasq, nftables)
follows the database: after every change, the host is planned from the rows and made so
(:mod:`corral.compute.network_host`), inside the change's transaction, so that a change the
host refuses is not committed either.

* Names are unique on the host, whatever the project: a name is its bridge's and its
  guests' DNS domain. A network of a project the caller is not in answers
  :class:`~corral.errors.NotFound`, as one that does not exist.
* Subnets never overlap another network's or one of the host's own (409, naming it).
* ``bridged`` networks join a bridge of the host's: only admins create them.
* Only a corral running as root makes networks; a per-user corral offers user-mode
  networking only, and says so.
* ``corral.toml``'s ``[network] host = false`` keeps networks in the database only: the host
  is left alone (what a host whose networking is not corral's to change needs).

The ports guests' NICs have on networks are managed in :mod:`corral.compute.addresses`.

Every create and delete, allowed or refused, is in the audit log.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, authorize
from corral.access.projects import find_project
from corral.access.scope import visible
from corral.compute.context import Corral
from corral.compute.network_host import (
    host_enabled,
    host_lock,
    host_networking,
    host_restored,
    network_of,
)
from corral.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InUse,
    InvalidInput,
    NotFound,
)
from corral.net import ipam
from corral.spec import invalid_input
from corral.spec.net import NETWORK_NAME_PATTERN, NetworkKind, NetworkSpec
from corral.store.models import (
    DEFAULT_PROJECT,
    NetworkRow,
    PortRow,
    ProjectRow,
    VmRow,
    as_utc,
)

#: The fields of a network spec, in the order a refusal's message is searched for the one it
#: is about (a rule over several fields names the first it mentions).
SPEC_FIELDS = ("name", "kind", "subnet", "gateway", "bridge", "uplink", "vlan")


@dataclass(frozen=True)
class PortView:
    """A guest NIC on a network."""

    vm: str
    nic: str
    mac: str
    #: Its address on a managed network; ``None`` on a bridged one.
    address: str | None


@dataclass(frozen=True)
class NetworkView:
    """A network as the listing and ``info`` show it."""

    name: str
    project: str
    kind: NetworkKind
    subnet: str | None
    gateway: str | None
    bridge: str
    uplink: str | None
    vlan: int | None
    #: The NICs on it (only in ``info``; empty in listings).
    ports: tuple[PortView, ...]
    #: How many NICs are on it.
    used: int
    #: Addresses still free for guests; ``None`` on a bridged network.
    free: int | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NetworkFilter:
    """Which networks a listing shows; ``None`` matches everything."""

    project: str | None = None
    #: Only names that contain this.
    name: str | None = None
    kind: str | None = None


# -- pure rules -----------------------------------------------------------------------------


def network_spec(**fields: object) -> NetworkSpec:
    """The spec of ``fields`` (those of :class:`NetworkSpec`; ``None`` values left out).

    :raise InvalidInput: a field is not valid; a rule over several fields names the first
        of them its reason mentions (``gateway 10.9.0.1 is not a host address of ...`` is
        about ``gateway``).
    """
    given = {key: value for key, value in fields.items() if value is not None}
    try:
        return NetworkSpec.model_validate(given)
    except ValidationError as exc:
        refusal = invalid_input(exc)
        if refusal.field != "spec":
            raise refusal from None
        words = set(re.findall(r"[a-z]+", refusal.reason))
        # The fields the reason names as words, and where.
        positions = {f: refusal.reason.find(f) for f in SPEC_FIELDS if f in words}
        field = min(positions, key=lambda f: positions[f]) if positions else "spec"
        raise InvalidInput(field, refusal.reason) from None


def check_system(uid: int) -> None:
    """:raise Conflict: ``uid`` is not root's: virtual networks need root's corrald."""
    if uid != 0:
        raise Conflict(
            "virtual networks need corrald running as root; this corral runs as uid "
            f"{uid} and offers user-mode networking only"
        )


def check_host(spec: NetworkSpec, subnets: Iterable[object], interfaces: Collection[str]) -> None:
    """Check ``spec`` against what the host has.

    :param subnets: the host's own networks (``10.0.0.0/24``, or an address with its prefix).
    :param interfaces: the names of the host's interfaces.
    :raise Conflict: a managed network's subnet overlaps one of the host's, or its bridge's
        name is taken by an interface.
    :raise InvalidInput: a bridged network's bridge (field ``bridge``) or an uplink (field
        ``uplink``) is no interface of the host.
    """
    if spec.subnet is not None:
        for text in subnets:
            try:
                own = ipaddress.ip_network(str(text), strict=False)
            except ValueError:
                continue
            if isinstance(own, ipaddress.IPv4Network) and spec.subnet.overlaps(own):
                raise Conflict(f"subnet {spec.subnet} overlaps the host's own network {own}")
    if spec.managed and spec.bridge_ifname in interfaces:
        raise Conflict(f"the host already has an interface named {spec.bridge_ifname}")
    if spec.bridge is not None and spec.bridge not in interfaces:
        raise InvalidInput("bridge", f"the host has no bridge {spec.bridge!r}")
    if spec.uplink is not None and spec.uplink not in interfaces:
        raise InvalidInput("uplink", f"the host has no interface {spec.uplink!r}")


def free_count(spec: NetworkSpec, used: int) -> int | None:
    """Addresses left for guests: the subnet's hosts but the gateway, less ``used``."""
    if spec.subnet is None:
        return None
    hosts = max(spec.subnet.num_addresses - 2, 0)
    return max(hosts - 1 - used, 0)


def find_network(
    session: Session, principal: Principal, name: str, action: Action = Action.READ
) -> NetworkRow:
    """The network ``name``, if ``principal`` may take ``action`` on it.

    :raise NotFound: no such network, or not in a project ``principal`` sees.
    :raise Forbidden: ``principal`` sees it but may not take ``action``.
    """
    if not re.match(NETWORK_NAME_PATTERN, name):  # no such name can exist; keep it off SQL
        raise NotFound("network", name)
    query = select(NetworkRow).where(
        NetworkRow.name == name, visible(principal, NetworkRow.project_id)
    )
    row = session.scalars(query).first()
    if row is None:
        raise NotFound("network", name)
    authorize(principal, action, "network", name, row.project_id)
    return row


def project_name(session: Session, project_id: str) -> str:
    row = session.get(ProjectRow, project_id)
    return project_id if row is None else row.name


def _ports(session: Session, principal: Principal, network_id: str) -> tuple[PortView, ...]:
    """The network's ports; a VM the caller does not see is shown as ``-``."""
    query = (
        select(PortRow, VmRow.name, VmRow.project_id)
        .join(VmRow, VmRow.id == PortRow.vm_id)
        .where(PortRow.network_id == network_id)
        .order_by(VmRow.name, PortRow.nic)
    )
    seen = principal.project_ids
    return tuple(
        PortView(
            vm if principal.is_admin or project in seen else "-",
            port.nic,
            port.mac,
            port.address,
        )
        for port, vm, project in session.execute(query)
    )


def _view(row: NetworkRow, project: str, ports: tuple[PortView, ...], used: int) -> NetworkView:
    spec = network_of(row)
    return NetworkView(
        name=row.name,
        project=project,
        kind=spec.kind,
        subnet=None if spec.subnet is None else str(spec.subnet),
        gateway=str(spec.gateway_address) if spec.managed else None,
        bridge=spec.bridge_ifname,
        uplink=spec.uplink,
        vlan=spec.vlan,
        ports=ports,
        used=used,
        free=free_count(spec, used),
        created_at=as_utc(row.created_at).isoformat(),
    )


def get_network(ctx: Corral, principal: Principal, name: str) -> NetworkView:
    """One network with its ports (see :func:`find_network` for the errors)."""
    with ctx.db.session() as session:
        row = find_network(session, principal, name)
        ports = _ports(session, principal, row.id)
        return _view(row, project_name(session, row.project_id), ports, len(ports))


def page_networks(
    ctx: Corral,
    principal: Principal,
    filters: NetworkFilter | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[NetworkView], int]:
    """One page of the networks ``principal`` sees, by name, and how many there are in all.

    :raise NotFound: ``filters.project`` names no project ``principal`` sees.
    """
    f = filters or NetworkFilter()
    with ctx.db.session() as session:
        query = select(NetworkRow).where(visible(principal, NetworkRow.project_id))
        if f.project is not None:
            project_id = find_project(session, principal, f.project).id
            query = query.where(NetworkRow.project_id == project_id)
        if f.kind is not None:
            query = query.where(NetworkRow.kind == f.kind)
        if f.name is not None:
            query = query.where(NetworkRow.name.contains(f.name, autoescape=True))
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(session.scalars(query.order_by(NetworkRow.name).limit(limit).offset(offset)))
        counted = session.execute(
            select(PortRow.network_id, func.count())
            .where(PortRow.network_id.in_([r.id for r in rows]))
            .group_by(PortRow.network_id)
        )
        counts = {network_id: int(n) for network_id, n in counted}
        views = [
            _view(r, project_name(session, r.project_id), (), counts.get(r.id, 0)) for r in rows
        ]
    return views, total


# -- changes ----------------------------------------------------------------------------------


def create_network(
    ctx: Corral,
    actor: Principal,
    name: str,
    kind: str = "nat",
    subnet: str | None = None,
    gateway: str | None = None,
    bridge: str | None = None,
    uplink: str | None = None,
    vlan: int | None = None,
    project: str | None = None,
    uid: int | None = None,
) -> NetworkView:
    """Create a network in ``project`` (``default`` when ``None``) and make it on the host.

    :param uid: the user corral runs as (this process's effective uid when ``None``).
    :raise InvalidInput: a bad field (named), or a bridge or uplink the host lacks.
    :raise NotFound: no such project, or ``actor`` is no member of it.
    :raise Forbidden: ``actor``'s role may not create, or a bridged network by a non-admin.
    :raise AlreadyExists: a network has that name.
    :raise Conflict: the subnet overlaps another network's (named) or the host's own; a
        corral not running as root.
    """
    project = DEFAULT_PROJECT if project is None else project
    detail = {
        k: v
        for k, v in {
            "kind": kind,
            "subnet": subnet,
            "gateway": gateway,
            "bridge": bridge,
            "uplink": uplink,
            "vlan": vlan,
        }.items()
        if v is not None
    }
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(ctx, actor, "network.create", "network", name, project, detail) as op,
    ):
        spec = network_spec(
            name=name,
            kind=kind,
            subnet=subnet,
            gateway=gateway,
            bridge=bridge,
            uplink=uplink,
            vlan=vlan,
        )
        session = op.session
        project_id = find_project(session, actor, project).id
        authorize(actor, Action.CREATE, "project", project, project_id)
        if spec.kind == "bridged" and not actor.is_admin:
            raise Forbidden(
                actor.name, actor.role.value, "create", "bridged networks (admins only)"
            )
        check_system(os.geteuid() if uid is None else uid)
        if session.scalars(select(NetworkRow.id).where(NetworkRow.name == name)).first():
            raise AlreadyExists("network", name)
        ipam.check_subnets(spec, [network_of(r) for r in session.scalars(select(NetworkRow))])
        if host_enabled(ctx):
            networking = host_networking()
            check_host(spec, networking.host_subnets(), networking.host_interfaces())
        row = NetworkRow(
            id=str(uuid.uuid4()),
            name=name,
            project_id=project_id,
            kind=spec.kind,
            spec=spec.model_dump_json(exclude_none=True),
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError as exc:
            raise AlreadyExists("network", name) from exc
        host.sync(session)
        return _view(row, project, (), 0)


def delete_network(ctx: Corral, actor: Principal, name: str) -> None:
    """Delete a network no NIC is on, and what the host had for it.

    :raise NotFound: no such network, or not visible to ``actor``.
    :raise Forbidden: ``actor``'s role may not delete.
    :raise InUse: NICs are on it (naming their VMs).
    """
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(ctx, actor, "network.delete", "network", name) as op,
    ):
        row = find_network(op.session, actor, name)
        op.project = project_name(op.session, row.project_id)
        authorize(actor, Action.DELETE, "network", name, row.project_id)
        _check_unused(op.session, actor, row)
        op.session.delete(row)
        try:
            op.session.flush()
        except IntegrityError:  # a NIC joined it meanwhile
            raise InUse("network", name, ["a vm"]) from None
        host.sync(op.session)


def _check_unused(session: Session, principal: Principal, row: NetworkRow) -> None:
    ports = _ports(session, principal, row.id)
    if ports:
        vms = sorted({p.vm for p in ports})
        raise InUse("network", row.name, [f"vm {vm}" for vm in vms])
