"""A VM's long operations as tasks: checked at once, queued, audited.

What every VM action, snapshot operation and clone does before its task exists: the VM is
found in the caller's projects (404), the caller's role may take the operation (403), the
VM's state allows it (409 naming the state). A refusal is written to the audit log with the
class of the error that refused it; an accepted operation when its task ends, ``ok`` or the
class of the error that ended it, with the task's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request, Response

from corral.access.principal import Action, Principal
from corral.api.routers.tasks import accepted
from corral.api.schemas import CONFLICT, NOT_FOUND, TaskRead
from corral.compute.context import Corral
from corral.compute.lifecycle import Progress
from corral.compute.state import Op
from corral.compute.tasks import Report, Target, TaskPool
from corral.errors import CorralError

#: ``responses=`` of a VM action.
ACTION_RESPONSES = {**NOT_FOUND, **CONFLICT}

#: What an action does, given where to report its progress: the task's final detail.
Work = Callable[[Progress], str]


def project_of(ctx: Corral, name: str) -> str | None:
    """The name of VM ``name``'s project, for the audit log (``None``: no such VM)."""
    from sqlalchemy import select

    from corral.store.models import ProjectRow, VmRow

    if "\x00" in name:
        return None
    with ctx.db.session() as session:
        query = select(ProjectRow.name).join(VmRow, VmRow.project_id == ProjectRow.id)
        return session.scalars(query.where(VmRow.name == name)).first()


def check_operable(ctx: Corral, principal: Principal, name: str, op: Op, action: Action) -> str:
    """Check ``principal`` may take ``action`` on VM ``name`` and ``op`` is allowed now.

    The VM is reconciled with the host first unless another operation holds its lock (then
    the recorded state is what that operation left so far, and the task decides again).

    :return: the VM's project id.
    :raise NotFound: no such VM, or not visible to ``principal``.
    :raise Forbidden: ``principal`` sees the VM but may not take ``action``.
    :raise StateError: ``op`` is not allowed in the VM's state (which the message names).
    """
    from corral.access.scope import find_owned
    from corral.compute import records
    from corral.compute.lifecycle import vm_lock
    from corral.compute.state import VmState, require
    from corral.store.models import VmRow

    with ctx.db.session() as session:
        project_id = find_owned(session, principal, VmRow, "vm", name, action).project_id
    lock = vm_lock(ctx, name)
    locked = lock.try_acquire()
    try:
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            state = records.reconcile(vm) if locked else VmState(vm.row.state)
    finally:
        lock.release()
    require(name, op, state)
    return project_id


@contextmanager
def refusal_audited(
    ctx: Corral, principal: Principal, verb: str, name: str, project: str | None, asked: Any
) -> Iterator[None]:
    """Record in the audit log a request that the block refuses (and let the refusal go).

    :param verb: the audit log's action: ``vm.snapshot``.
    :param asked: the request's options, recorded with the refusal's message.
    """
    from corral.access.audit import record

    try:
        yield
    except CorralError as exc:
        detail = {**asked, "error": exc.message}
        with ctx.db.session() as session:
            record(session, principal.name, verb, "vm", name, project, type(exc).__name__, detail)
        raise


@contextmanager
def vm_checked(
    ctx: Corral, principal: Principal, verb: str, name: str, asked: dict[str, Any]
) -> Iterator[str | None]:
    """Find VM ``name`` among those ``principal`` may operate, then audit the block's refusal.

    The block is given the name of the VM's project.

    :raise NotFound: no such VM, or not visible to ``principal`` (not recorded: the caller
        learns nothing of another project's VM, and the log nothing of its request).
    :raise Forbidden: ``principal`` sees the VM but may not operate it.
    """
    from corral.api.tenancy import require_visible
    from corral.store.models import VmRow

    require_visible(ctx, principal, VmRow, "vm", name, Action.OPERATE)
    project = project_of(ctx, name)
    with refusal_audited(ctx, principal, verb, name, project, asked):
        yield project


def act(
    ctx: Corral,
    pool: TaskPool,
    principal: Principal,
    request: Request,
    response: Response,
    name: str,
    op: Op,
    work: Work,
    asked: dict[str, Any] | None = None,
    action: Action = Action.OPERATE,
) -> TaskRead:
    """Check the operation can start, then queue its task; audit the refusal or the outcome.

    The task and the audit log's action are ``vm.<op>``.

    :param asked: the operation's options, for the audit log.
    :return: the queued task (``Location`` names it).
    """
    from corral.access.audit import audited

    verb = f"vm.{op.value}"
    project = project_of(ctx, name)
    options = dict(asked or {})
    with refusal_audited(ctx, principal, verb, name, project, options):
        project_id = check_operable(ctx, principal, name, op, action)

    def run(report: Report) -> str:
        options["task"] = report.task_id
        with audited(ctx, principal, verb, "vm", name, project, options) as entry:
            said = work(report)
            entry.detail["result"] = said
        return said

    task = pool.submit(principal, verb, Target("vm", name), project_id, run)
    return accepted(request, response, task)
