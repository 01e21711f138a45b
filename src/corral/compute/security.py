"""Security groups (virtual firewalls): named rule sets of a project, attached to the NICs of
its VMs.

A group is a row (:class:`~corral.store.models.SecurityGroupRow`) with its rules
(:class:`~corral.store.models.SgRuleRow`, each a :class:`~corral.spec.security.RuleSpec`);
an attachment is a :class:`~corral.store.models.PortGroupRow`. The host follows the database
as for networks (:func:`corral.compute.network_host.sync_host`, which plans the groups with
:func:`security_plan`): adding or removing a rule, attaching or detaching a group reloads
corral's nftables tables in one transaction, live, without touching the VM, in whatever state
it is; connections already open stay open.

* A NIC with no group is not filtered; a NIC with groups lets in only what their rules allow
  (and answers), and lets out everything unless they have ``out`` rules
  (:mod:`corral.net.security`).
* Groups filter by the addresses corral leased: only NICs on a managed network (``nat``,
  ``isolated``) take them.
* Names are unique within a project. A group of a project the caller is not in answers
  :class:`~corral.errors.NotFound`, as one that does not exist; a rule's peer group and an
  attached VM are of the group's own project.
* A group attached to a NIC or named by another group's rule is not deleted (409).

Every change, allowed or refused, is in the audit log.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, authorize
from corral.access.projects import find_project
from corral.access.scope import find_owned, visible
from corral.compute.context import Corral
from corral.compute.network_host import host_lock, host_restored, network_of
from corral.compute.networks import project_name
from corral.errors import AlreadyExists, Conflict, InUse, InvalidInput, NotFound
from corral.net.plan import nic_tap
from corral.net.security import Guard, Rule, SecurityPlan, group_key
from corral.spec import invalid_input
from corral.spec.security import GROUP_NAME_PATTERN, RuleSpec, parse_ports
from corral.store.models import (
    DEFAULT_PROJECT,
    NetworkRow,
    PortGroupRow,
    PortRow,
    SecurityGroupRow,
    SgRuleRow,
    VmRow,
    as_utc,
)

#: The fields of a rule, in the order a refusal's message is searched for the one it is about.
RULE_FIELDS = ("ports", "protocol", "direction", "peer", "cidr", "group")


@dataclass(frozen=True)
class RuleView:
    """A rule as ``info`` shows it."""

    id: str
    direction: str
    protocol: str
    #: ``80``, ``8000-8100``; ``None``: every port (or a protocol without ports).
    ports: str | None
    #: The peer: a CIDR, or a group's name; both ``None``: anywhere.
    cidr: str | None
    group: str | None


@dataclass(frozen=True)
class GroupView:
    """A security group with its rules and the NICs it is attached to (``vm/nic``)."""

    name: str
    project: str
    description: str
    rules: tuple[RuleView, ...]
    attached: tuple[str, ...]
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pure rules -------------------------------------------------------------------------------


def rule_spec(**fields: object) -> RuleSpec:
    """The rule of ``fields`` (those of :class:`RuleSpec`; ``None`` values left out).

    :raise InvalidInput: a field is not valid (a rule over several fields names the first
        its reason mentions: ``ports: impossible port range 90-80`` is about ``ports``).
    """
    given = {key: value for key, value in fields.items() if value is not None}
    try:
        return RuleSpec.model_validate(given)
    except ValidationError as exc:
        refusal = invalid_input(exc)
        if refusal.field in ("port_min", "port_max"):
            raise InvalidInput("ports", refusal.reason) from None
        if refusal.field != "spec":
            raise refusal from None
        words = set(re.findall(r"[a-z_]+", refusal.reason))
        positions = {f: refusal.reason.find(f) for f in RULE_FIELDS if f in words}
        field = min(positions, key=lambda f: positions[f]) if positions else "rule"
        raise InvalidInput(field, refusal.reason.removeprefix(f"{field}: ")) from None


def make_rule(
    direction: str = "in",
    protocol: str = "tcp",
    ports: str | None = None,
    cidr: str | None = None,
    group: str | None = None,
) -> RuleSpec:
    """The rule of the API's and the CLI's fields (``ports`` as ``80`` or ``8000-8100``).

    :raise InvalidInput: a field is not valid, naming it (an impossible port range names
        ``ports``).
    """
    low = high = None
    if ports is not None:
        try:
            low, high = parse_ports(ports)
        except ValueError as exc:
            raise InvalidInput("ports", str(exc)) from None
    return rule_spec(
        direction=direction,
        protocol=protocol,
        port_min=low,
        port_max=high,
        cidr=cidr,
        group=group,
    )


def security_plan(
    groups: Iterable[tuple[str, Sequence[SgRuleRow]]],
    guarded: Iterable[tuple[str, str, str, Sequence[str]]],
) -> SecurityPlan:
    """What the host needs for ``groups`` (group id, its rules) and ``guarded`` ports (tap,
    MAC, address, the ids of its groups): a port without an address is left out (it cannot
    be told apart by address)."""
    rules = {
        group_key(gid): tuple(
            Rule(
                direction="in" if r.direction == "in" else "out",
                protocol=RuleSpec.model_validate({"protocol": r.protocol}).protocol,
                port_min=r.port_min,
                port_max=r.port_max,
                cidr=None if r.cidr is None else ipaddress.IPv4Network(r.cidr),
                group=None if r.remote_group_id is None else group_key(r.remote_group_id),
            )
            for r in found
        )
        for gid, found in groups
    }
    guards = tuple(
        Guard(tap, mac, ipaddress.IPv4Address(address), tuple(group_key(g) for g in ids))
        for tap, mac, address, ids in guarded
        if address and ids
    )
    return SecurityPlan(groups=rules, guards=guards)


def load_plan(session: Session) -> SecurityPlan:
    """:func:`security_plan` of the groups, rules and attachments ``session`` sees."""
    rules: dict[str, list[SgRuleRow]] = {
        gid: [] for gid in session.scalars(select(SecurityGroupRow.id))
    }
    for rule in session.scalars(select(SgRuleRow).order_by(SgRuleRow.created_at, SgRuleRow.id)):
        rules.setdefault(rule.group_id, []).append(rule)
    attached: dict[str, list[str]] = {}
    for port_id, group_id in session.execute(
        select(PortGroupRow.port_id, PortGroupRow.group_id).order_by(PortGroupRow.group_id)
    ):
        attached.setdefault(port_id, []).append(group_id)
    ports = session.scalars(
        select(PortRow).where(PortRow.id.in_(sorted(attached))).order_by(PortRow.id)
    )
    guarded = [
        (nic_tap(UUID(p.vm_id), p.nic), p.mac, p.address or "", attached[p.id]) for p in ports
    ]
    return security_plan(sorted(rules.items()), guarded)


# -- lookups ----------------------------------------------------------------------------------


def find_group(
    session: Session,
    principal: Principal,
    name: str,
    project: str | None = None,
    action: Action = Action.READ,
) -> SecurityGroupRow:
    """The group ``name`` (of ``project``, if given), if ``principal`` may take ``action``.

    :raise NotFound: no such group in a project ``principal`` sees.
    :raise Conflict: groups of that name are in several of ``principal``'s projects and
        ``project`` is not given.
    :raise Forbidden: ``principal`` sees it but may not take ``action``.
    """
    if not re.match(GROUP_NAME_PATTERN, name):
        raise NotFound("security group", name)
    query = select(SecurityGroupRow).where(
        SecurityGroupRow.name == name, visible(principal, SecurityGroupRow.project_id)
    )
    if project is not None:
        query = query.where(
            SecurityGroupRow.project_id == find_project(session, principal, project).id
        )
    rows = list(session.scalars(query))
    if not rows:
        raise NotFound("security group", name)
    if len(rows) > 1:
        projects = sorted(project_name(session, r.project_id) for r in rows)
        raise Conflict(
            f"security groups named {name!r} are in projects {', '.join(projects)}: name one"
        )
    authorize(principal, action, "security group", name, rows[0].project_id)
    return rows[0]


def _rule_view(session: Session, rule: SgRuleRow) -> RuleView:
    peer = (
        None
        if rule.remote_group_id is None
        else session.get(SecurityGroupRow, rule.remote_group_id)
    )
    ports = None
    if rule.port_min is not None:
        ports = (
            str(rule.port_min)
            if rule.port_min == rule.port_max
            else f"{rule.port_min}-{rule.port_max}"
        )
    return RuleView(
        rule.id,
        rule.direction,
        rule.protocol,
        ports,
        rule.cidr,
        None if peer is None else peer.name,
    )


def _view(session: Session, row: SecurityGroupRow) -> GroupView:
    rules = session.scalars(
        select(SgRuleRow)
        .where(SgRuleRow.group_id == row.id)
        .order_by(SgRuleRow.created_at, SgRuleRow.id)
    )
    attached = session.execute(
        select(VmRow.name, PortRow.nic)
        .join(PortRow, PortRow.vm_id == VmRow.id)
        .join(PortGroupRow, PortGroupRow.port_id == PortRow.id)
        .where(PortGroupRow.group_id == row.id)
        .order_by(VmRow.name, PortRow.nic)
    )
    return GroupView(
        name=row.name,
        project=project_name(session, row.project_id),
        description=row.description,
        rules=tuple(_rule_view(session, r) for r in rules),
        attached=tuple(f"{vm}/{nic}" for vm, nic in attached),
        created_at=as_utc(row.created_at).isoformat(),
    )


def get_group(
    ctx: Corral, principal: Principal, name: str, project: str | None = None
) -> GroupView:
    """One group with its rules and attachments (see :func:`find_group` for the errors)."""
    with ctx.db.session() as session:
        return _view(session, find_group(session, principal, name, project))


def list_groups(ctx: Corral, principal: Principal, project: str | None = None) -> list[GroupView]:
    """The groups ``principal`` sees, by project and name.

    :raise NotFound: ``project`` names no project ``principal`` sees.
    """
    with ctx.db.session() as session:
        query = select(SecurityGroupRow).where(visible(principal, SecurityGroupRow.project_id))
        if project is not None:
            project_id = find_project(session, principal, project).id
            query = query.where(SecurityGroupRow.project_id == project_id)
        rows = session.scalars(query.order_by(SecurityGroupRow.name, SecurityGroupRow.project_id))
        return [_view(session, r) for r in rows]


# -- changes ----------------------------------------------------------------------------------


def _add_rule(session: Session, group: SecurityGroupRow, spec: RuleSpec) -> SgRuleRow:
    """Add ``spec`` to ``group``; a peer group is looked up in the group's project.

    :raise NotFound: the peer group is not in the group's project.
    """
    remote = None
    if spec.group is not None:
        remote = session.scalars(
            select(SecurityGroupRow.id).where(
                SecurityGroupRow.name == spec.group,
                SecurityGroupRow.project_id == group.project_id,
            )
        ).first()
        if remote is None:
            raise NotFound("security group", spec.group)
    row = SgRuleRow(
        id=str(uuid.uuid4()),
        group_id=group.id,
        direction=spec.direction,
        protocol=spec.protocol,
        port_min=spec.port_min,
        port_max=spec.port_max,
        cidr=None if spec.cidr is None else str(spec.cidr),
        remote_group_id=remote,
    )
    session.add(row)
    session.flush()
    return row


def create_group(
    ctx: Corral,
    actor: Principal,
    name: str,
    rules: Sequence[RuleSpec] = (),
    description: str = "",
    project: str | None = None,
) -> GroupView:
    """Create group ``name`` in ``project`` (``default`` when ``None``) with ``rules`` (a
    rule's peer may be the group itself).

    :raise InvalidInput: a bad name (field ``name``).
    :raise NotFound: no such project (or not ``actor``'s), or a rule's peer group.
    :raise Forbidden: ``actor``'s role may not create.
    :raise AlreadyExists: the project has a group of that name.
    """
    project = DEFAULT_PROJECT if project is None else project
    detail = {"rules": [r.model_dump(mode="json", exclude_none=True) for r in rules]}
    with audited(
        ctx, actor, "security_group.create", "security group", name, project, detail
    ) as op:
        if not re.match(GROUP_NAME_PATTERN, name):
            raise InvalidInput(
                "name", f"{name!r} is not allowed; it must match {GROUP_NAME_PATTERN}"
            )
        project_id = find_project(op.session, actor, project).id
        authorize(actor, Action.CREATE, "project", project, project_id)
        taken = select(SecurityGroupRow.id).where(
            SecurityGroupRow.name == name, SecurityGroupRow.project_id == project_id
        )
        if op.session.scalars(taken).first() is not None:
            raise AlreadyExists("security group", name)
        row = SecurityGroupRow(
            id=str(uuid.uuid4()), name=name, project_id=project_id, description=description
        )
        op.session.add(row)
        try:
            op.session.flush()
        except IntegrityError as exc:
            raise AlreadyExists("security group", name) from exc
        for spec in rules:
            _add_rule(op.session, row, spec)
        # Not attached anywhere yet: the host has nothing to change.
        return _view(op.session, row)


def delete_group(ctx: Corral, actor: Principal, name: str, project: str | None = None) -> None:
    """Delete a group that is attached nowhere and named by no other group's rule.

    :raise NotFound: no such group, or not visible to ``actor``.
    :raise Forbidden: ``actor``'s role may not delete.
    :raise InUse: it is attached (naming the NICs) or another group's rule names it.
    """
    with audited(ctx, actor, "security_group.delete", "security group", name, project) as op:
        row = find_group(op.session, actor, name, project, Action.DELETE)
        op.project = project_name(op.session, row.project_id)
        view = _view(op.session, row)
        if view.attached:
            raise InUse("security group", name, [f"nic {a}" for a in view.attached])
        referrers = op.session.scalars(
            select(SecurityGroupRow.name)
            .join(SgRuleRow, SgRuleRow.group_id == SecurityGroupRow.id)
            .where(SgRuleRow.remote_group_id == row.id, SecurityGroupRow.id != row.id)
            .distinct()
        )
        users = [f"a rule of security group {g!r}" for g in sorted(referrers)]
        if users:
            raise InUse("security group", name, users)
        for rule in op.session.scalars(select(SgRuleRow).where(SgRuleRow.group_id == row.id)):
            op.session.delete(rule)
        op.session.flush()
        op.session.delete(row)
        op.session.flush()


def add_rule(
    ctx: Corral, actor: Principal, group: str, spec: RuleSpec, project: str | None = None
) -> RuleView:
    """Add ``spec`` to ``group`` and enforce it at once on the NICs the group is attached to.

    :raise NotFound: no such group, or the rule's peer group is not in the group's project.
    :raise Forbidden: ``actor``'s role may not operate.
    """
    detail = spec.model_dump(mode="json", exclude_none=True)
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(
            ctx, actor, "security_group.rule_add", "security group", group, project, detail
        ) as op,
    ):
        row = find_group(op.session, actor, group, project, Action.OPERATE)
        op.project = project_name(op.session, row.project_id)
        rule = _add_rule(op.session, row, spec)
        host.sync(op.session)
        return _rule_view(op.session, rule)


def remove_rule(
    ctx: Corral, actor: Principal, group: str, rule_id: str, project: str | None = None
) -> None:
    """Remove rule ``rule_id`` (its id, or a unique prefix of it) from ``group``, at once.

    :raise NotFound: no such group or rule.
    :raise Forbidden: ``actor``'s role may not operate.
    """
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(
            ctx,
            actor,
            "security_group.rule_remove",
            "security group",
            group,
            project,
            {"rule": rule_id},
        ) as op,
    ):
        row = find_group(op.session, actor, group, project, Action.OPERATE)
        op.project = project_name(op.session, row.project_id)
        prefix = rule_id.lower()
        found = [
            r
            for r in op.session.scalars(select(SgRuleRow).where(SgRuleRow.group_id == row.id))
            if re.fullmatch(r"[0-9a-f-]{4,36}", prefix) and r.id.startswith(prefix)
        ]
        if len(found) != 1:
            raise NotFound("rule", rule_id, f"in security group {group!r}")
        op.session.delete(found[0])
        op.session.flush()
        host.sync(op.session)


def _port_of(session: Session, vm: VmRow, nic: str | None) -> PortRow:
    """The port of ``vm``'s NIC ``nic`` (its only NIC when ``None``) on a managed network.

    :raise Conflict: the VM has no NIC on a network, several (and ``nic`` is ``None``), or
        the NIC is on a bridged network (no address of corral's to filter by).
    :raise NotFound: it has no NIC ``nic`` on a network.
    """
    found = list(
        session.execute(
            select(PortRow, NetworkRow)
            .join(NetworkRow, NetworkRow.id == PortRow.network_id)
            .where(PortRow.vm_id == vm.id)
            .order_by(PortRow.nic)
        )
    )
    if not found:
        raise Conflict(f"vm {vm.name!r} has no NIC on a network: security groups need one")
    if nic is None:
        if len(found) > 1:
            nics = ", ".join(p.nic for p, _ in found)
            raise Conflict(f"vm {vm.name!r} has NICs {nics} on networks: name one (nic)")
        port, network = found[0]
    else:
        match = [(p, n) for p, n in found if p.nic == nic]
        if not match:
            raise NotFound("nic", nic, f"of vm {vm.name!r} on a network")
        port, network = match[0]
    if not network_of(network).managed or port.address is None:
        raise Conflict(
            f"vm {vm.name!r} NIC {port.nic!r} is on bridged network {network.name!r}: "
            "security groups filter by the addresses of managed (nat, isolated) networks"
        )
    return port


def attach(
    ctx: Corral,
    actor: Principal,
    group: str,
    vm: str,
    nic: str | None = None,
    project: str | None = None,
) -> GroupView:
    """Attach ``group`` to NIC ``nic`` of ``vm`` (its only NIC when ``None``), enforced at
    once, in whatever state the VM is.

    :raise NotFound: no such group, VM or NIC (or not ``actor``'s, or the VM is of another
        project than the group's).
    :raise Forbidden: ``actor``'s role may not operate.
    :raise Conflict: the VM has no NIC on a network, several (none named), or the NIC is on a
        bridged network; the group is attached to that NIC already.
    """
    return _attachment(ctx, actor, group, vm, nic, project, attaching=True)


def detach(
    ctx: Corral,
    actor: Principal,
    group: str,
    vm: str,
    nic: str | None = None,
    project: str | None = None,
) -> GroupView:
    """Detach ``group`` from NIC ``nic`` of ``vm``, at once.

    :raise NotFound: no such group, VM or NIC, or the group is not attached to it.
    :raise Forbidden: ``actor``'s role may not operate.
    :raise Conflict: as :func:`attach`.
    """
    return _attachment(ctx, actor, group, vm, nic, project, attaching=False)


def _attachment(
    ctx: Corral,
    actor: Principal,
    group: str,
    vm: str,
    nic: str | None,
    project: str | None,
    attaching: bool,
) -> GroupView:
    verb = "attach" if attaching else "detach"
    detail = {"vm": vm} | ({} if nic is None else {"nic": nic})
    with (
        host_restored(ctx) as host,
        host_lock(ctx),
        audited(
            ctx, actor, f"security_group.{verb}", "security group", group, project, detail
        ) as op,
    ):
        row = find_group(op.session, actor, group, project, Action.OPERATE)
        op.project = project_name(op.session, row.project_id)
        vm_row = find_owned(op.session, actor, VmRow, "vm", vm, Action.OPERATE)
        if vm_row.project_id != row.project_id:
            raise NotFound("vm", vm, f"in project {op.project!r}")
        port = _port_of(op.session, vm_row, nic)
        op.detail["nic"] = port.nic
        link = op.session.get(PortGroupRow, (port.id, row.id))
        where = f"vm {vm!r} NIC {port.nic!r}"
        if attaching:
            if link is not None:
                raise Conflict(f"security group {group!r} is attached to {where} already")
            op.session.add(PortGroupRow(port_id=port.id, group_id=row.id))
        else:
            if link is None:
                raise NotFound("security group", group, f"attached to {where}")
            op.session.delete(link)
        op.session.flush()
        host.sync(op.session)
        return _view(op.session, row)
