"""Changing a defined VM: its vCPUs, its memory, its host port forwards and its display.

Each takes effect at the VM's next start, so a VM whose QEMU runs (``starting``,
``running``, ``paused``, ``stopping``) refuses a change with a
:class:`~corral.errors.StateError` naming its state; asking for what the VM already has is
no change and is accepted in any state. The display in particular: QEMU adds or removes a
VNC server only at start, so enabling VNC on a running VM and disabling it are both refused
with the state named (stop it first), never left to the next start behind the user's back.
Disabling VNC also forgets the VM's VNC password (:mod:`corral.compute.vnc`).

:func:`plan_update` is pure: the spec as it is and what is asked give the new spec, what
changes, and what the change asks of the project's quota (growth only: giving back is never
refused). :func:`update` applies it under the VM's lock; the quota is checked atomically
with the write of the new spec under the project's lock
(:func:`corral.access.quotas.reserving`), as for a create, so that two growths that would
each fit but not both never both succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import update as sql_update

from corral.access.quotas import Demand, reserving
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.define import check_ports_free, parse_forward
from corral.compute.lifecycle import vm_lock
from corral.compute.state import ALLOWED, Op, VmState, require
from corral.compute.vnc import forget_vnc_password
from corral.errors import InvalidInput, StateError
from corral.spec import parse
from corral.spec.vm import PortForward, VmSpec
from corral.store.models import VmRow

#: Seconds :func:`update` waits for an operation that holds the VM (a start, a stop).
LOCK_WAIT = 10.0


@dataclass(frozen=True)
class UpdateRequest:
    """What ``corral update`` asks to change; a field left ``None`` keeps its value."""

    vcpus: int | None = None
    #: Guest memory: bytes, or a size such as ``1G``.
    memory: str | int | None = None
    #: The host port forwards of the VM's network card, replacing its own (``()``: none),
    #: each ``[tcp|udp:][ADDR:]HOSTPORT:GUESTPORT``.
    forwards: tuple[str, ...] | None = None
    #: ``vnc``: a VNC display on the VM's UNIX socket (kept as it is if it has one);
    #: ``none``: no display at all.
    display: Literal["vnc", "none"] | None = None


@dataclass(frozen=True)
class UpdatePlan:
    """What :func:`plan_update` found."""

    #: The VM's spec after the change.
    spec: VmSpec
    #: ``[before, after]`` by field (``vcpus``, ``memory``, ``forwards``, ``display``), of
    #: the fields that change; empty when nothing does.
    changes: dict[str, list[Any]]
    #: What the change asks of the project's quota on top of what the VM holds.
    demand: Demand


def forward_text(forward: PortForward) -> str:
    """A forward as the VM list shows it: ``tcp:127.0.0.1:2222->22``."""
    return f"{forward.protocol}:{forward.host_addr}:{forward.host_port}->{forward.guest_port}"


def plan_update(spec: VmSpec, state: VmState, req: UpdateRequest) -> UpdatePlan:
    """The change ``req`` asks of the VM ``spec`` in state ``state`` (pure).

    :raise InvalidInput: a value is not valid (naming the field: ``vcpus``, ``memory``,
        ``forwards.N``).
    :raise StateError: something would change while the VM's QEMU runs.
    """
    data = spec.model_dump()
    if req.vcpus is not None:
        data["vcpus"] = req.vcpus
    if req.memory is not None:
        data["memory"] = req.memory
    if req.forwards is not None:
        if not spec.nics:
            raise InvalidInput("forwards", "the VM has no network card to forward ports to")
        forwards = []
        for index, text in enumerate(req.forwards):
            try:
                forwards.append(parse_forward(text))
            except InvalidInput as exc:
                raise InvalidInput(f"forwards.{index}", exc.reason) from None
        data["nics"] = ({**data["nics"][0], "forwards": forwards}, *data["nics"][1:])
    data.update(_display_data(spec, req.display))
    try:
        new = parse(VmSpec, data)
    except InvalidInput as exc:
        if req.forwards is None or exc.field in ("vcpus", "memory"):
            raise
        # The only other change is to the forwards (a host port twice, say): name them.
        raise InvalidInput("forwards", exc.reason) from None
    changes: dict[str, list[Any]] = {}
    if new.vcpus != spec.vcpus:
        changes["vcpus"] = [spec.vcpus, new.vcpus]
    if new.memory != spec.memory:
        changes["memory"] = [spec.memory, new.memory]
    if new.nics and new.nics[0].forwards != spec.nics[0].forwards:
        changes["forwards"] = [
            [forward_text(f) for f in nic.forwards] for nic in (spec.nics[0], new.nics[0])
        ]
    changes.update(_display_change(spec, new, state))
    if changes:
        require(spec.name, Op.UPDATE, state)
    demand = Demand(
        instances=0,
        vcpus=max(0, new.vcpus - spec.vcpus),
        memory=max(0, new.memory - spec.memory),
        disk=0,
    )
    return UpdatePlan(new, changes, demand)


def _display_data(spec: VmSpec, display: str | None) -> dict[str, object]:
    """The spec fields that give ``spec`` the display ``display`` (``None``: as it is)."""
    if display is None or display == spec.display:
        return {}
    # display "vnc" alone is VNC on the UNIX socket; "none" has no VNC section.
    return {"display": display, "vnc": None}


def _display_change(old: VmSpec, new: VmSpec, state: VmState) -> dict[str, list[Any]]:
    """``{"display": [before, after]}`` when the display changes from ``old`` to ``new``.

    :raise StateError: it would change while the VM's QEMU runs (state ``state``).
    """
    if new.display == old.display:
        return {}
    if state not in ALLOWED[Op.UPDATE]:
        raise StateError(
            old.name,
            f"change the display ({old.display} -> {new.display}) of",
            state,
            sorted(ALLOWED[Op.UPDATE]),
            "QEMU adds or removes a VNC server only at start: stop it first",
        )
    return {"display": [old.display, new.display]}


def update(ctx: Corral, name: str, req: UpdateRequest) -> UpdatePlan:
    """Change VM ``name`` as ``req`` asks (see :func:`plan_update`), for its next start.

    :return: what changed.
    :raise NotFound: there is no such VM.
    :raise Busy: another operation held the VM for :data:`LOCK_WAIT` seconds.
    :raise InvalidInput: a value is not valid, for the spec or for the host (memory the host
        does not have), or a host port is another VM's.
    :raise StateError: the VM's QEMU runs.
    :raise QuotaExceeded: the growth would take the project past a quota (naming it).
    """
    from corral.spec.validate import validate_spec

    with vm_lock(ctx, name, wait=LOCK_WAIT):
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            state = records.reconcile(vm)
            vm_id, project_id, spec = vm.row.id, vm.row.project_id, vm.spec
        plan = plan_update(spec, state, req)
        if not plan.changes:
            return plan
        validate_spec(plan.spec, ctx.caps)
        try:
            check_ports_free(ctx, plan.spec)
        except InvalidInput as exc:
            raise InvalidInput("forwards", exc.reason) from None
        with reserving(ctx, project_id, plan.demand) as session:
            session.execute(
                sql_update(VmRow).where(VmRow.id == vm_id).values(spec=plan.spec.model_dump_json())
            )
        if plan.spec.vnc is None:
            forget_vnc_password(vm.paths.vnc_password)
    return plan
