"""``/vms``: the VM list (filtered, paginated), defining a VM, one VM, and its actions.

Defining a VM (``POST /vms``) takes milliseconds (its disks are copy-on-write clones), so it
answers 201 with the VM at once, not a task.

An action (start, stop, destroy, pause, resume, reboot, delete) answers 202 with a task
(``Location: /api/v1/tasks/{id}``) that runs it in the background. What is known before it
runs is answered at once: an unknown VM is 404, a state the operation cannot start from is
409 naming the state. Operations on one VM are serialised by its lock; a task that finds the
VM changed meanwhile ends as ``error`` with the same state message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request, Response

from corral.access.principal import Action, Principal
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset
from corral.api.routers.tasks import TaskPoolDep, task_read
from corral.api.schemas import (
    CONFLICT,
    ERRORS,
    NOT_FOUND,
    DiskRead,
    ErrorRead,
    Page,
    TaskRead,
    VmActionCreate,
    VmCreate,
    VmRead,
)
from corral.api.tenancy import require_visible
from corral.compute.context import Corral
from corral.compute.inventory import VmView
from corral.compute.lifecycle import Outcome
from corral.compute.state import Op
from corral.compute.tasks import Operation, Report, Target, TaskPool

router = APIRouter(prefix="/vms", tags=["vms"], responses=ERRORS)

State = Literal["defined", "starting", "running", "paused", "stopping", "shutoff", "crashed"]


def vm_read(view: VmView) -> VmRead:
    """The wire form of a VM view."""
    return VmRead(
        name=view.name,
        project=view.project,
        uuid=view.uuid,
        state=view.state,
        reason=view.reason,
        vcpus=view.vcpus,
        memory=view.memory,
        machine=view.machine,
        image=view.image,
        provisioned=view.provisioned,
        used=view.used,
        host_cpu=view.host_cpu,
        host_memory=view.host_memory,
        pid=view.pid,
        created_at=view.created_at,
        state_changed_at=view.state_changed_at,
        disks=[
            DiskRead(name=d.name, image=d.image, provisioned=d.provisioned, used=d.used)
            for d in view.disks
        ],
        forwards=view.forwards,
        instance_type=view.instance_type,
        keypair=view.keypair,
        instance_id=view.instance_id,
        ssh=view.ssh,
    )


@router.get("")
def list_vms(
    ctx: CorralDep,
    principal: PrincipalDep,
    state: Annotated[State | None, Query(description="Only VMs in this state.")] = None,
    image: Annotated[str | None, Query(max_length=63, description="Only clones of it.")] = None,
    name: Annotated[
        str | None, Query(max_length=63, description="Only names that contain this.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[VmRead]:
    """Every VM (running or not), by name, reconciled with the host."""
    from corral.access.scope import visible
    from corral.compute.inventory import page_vms
    from corral.store.models import VmRow

    if any("\x00" in text for text in (image or "", name or "")):
        # No name holds a NUL (and PostgreSQL refuses one in a query): nothing matches.
        return Page[VmRead](items=[], total=0, limit=limit, offset=offset)
    where = visible(principal, VmRow.project_id)
    if image is not None:
        where = where & (VmRow.image == image)
    if name is not None:
        where = where & VmRow.name.contains(name, autoescape=True)
    views, total = page_vms(ctx, where, state, limit, offset)
    return Page[VmRead](items=[vm_read(v) for v in views], total=total, limit=limit, offset=offset)


def require_creatable(ctx: Corral, principal: Principal, project: str) -> str:
    """Check ``principal`` may create objects in the project named ``project``.

    :return: the project's id.
    :raise NotFound: no such project, or ``principal`` is no member of it (the same answer).
    :raise Forbidden: ``principal`` sees the project but its role does not create.
    """
    from corral.access.principal import authorize
    from corral.access.projects import get_project

    project_id = get_project(ctx, principal, project).id
    authorize(principal, Action.CREATE, "project", project, project_id)
    return project_id


#: ``responses=`` of an endpoint that creates objects in a project.
CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {
        "model": ErrorRead,
        "description": "The caller's role may not create, or a quota (named) would be exceeded.",
    },
    404: {"model": ErrorRead, "description": "No such project or image (or not the caller's)."},
    409: {"model": ErrorRead, "description": "The name is taken."},
}


@router.post("", status_code=201, responses=CREATE_RESPONSES)
def create_vm(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: VmCreate,
) -> VmRead:
    """Define a VM (state ``defined``): its disks cloned, its quota taken; not started."""
    from corral.compute.define import CreateRequest, create
    from corral.compute.inventory import info

    require_creatable(ctx, principal, body.project)
    create(
        ctx,
        CreateRequest(
            name=body.name,
            image=body.image,
            vcpus=body.vcpus,
            memory=body.memory,
            disk_size=body.disk_size,
            machine=body.machine,
            forwards=tuple(body.forwards),
            firmware=body.firmware,
            project=body.project,
        ),
    )
    response.headers["Location"] = request.url_for("get_vm", name=body.name).path
    return vm_read(info(ctx, body.name))


@router.get("/{name}", responses=NOT_FOUND)
def get_vm(ctx: CorralDep, principal: PrincipalDep, name: str) -> VmRead:
    """One VM, its run state asked from QEMU."""
    from corral.compute.inventory import info
    from corral.store.models import VmRow

    require_visible(ctx, principal, VmRow, "vm", name)
    return vm_read(info(ctx, name))


#: ``responses=`` of a VM action.
ACTION_RESPONSES = {**NOT_FOUND, **CONFLICT}
#: The optional body of start and reboot.
ActionBody = Annotated[VmActionCreate | None, Body()]


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


def _said(outcome: Outcome) -> str:
    said = f"{outcome.state.value}: {outcome.detail}" if outcome.detail else outcome.state.value
    return said if outcome.seconds is None else f"{said} ({outcome.seconds:.1f} s)"


def _act(
    ctx: Corral,
    pool: TaskPool,
    principal: Principal,
    request: Request,
    response: Response,
    name: str,
    op: Op,
    fn: Operation,
    action: Action = Action.OPERATE,
) -> TaskRead:
    project_id = check_operable(ctx, principal, name, op, action)
    task = pool.submit(principal, f"vm.{op.value}", Target("vm", name), project_id, fn)
    response.headers["Location"] = request.url_for("get_task", task_id=task.id).path
    return task_read(task)


@router.post("/{name}/start", status_code=202, responses=ACTION_RESPONSES)
def start_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: ActionBody = None,
) -> TaskRead:
    """Boot a defined, shut-off or crashed VM: a task (with ``wait``, until it is ready)."""
    from corral.compute.lifecycle import start

    wait = body.wait if body else False

    def run(report: Report) -> str:
        report(10, "launching QEMU")
        return _said(start(ctx, name, wait=wait))

    return _act(ctx, pool, principal, request, response, name, Op.START, run)


@router.post("/{name}/stop", status_code=202, responses=ACTION_RESPONSES)
def stop_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
) -> TaskRead:
    """Shut a running VM down through ACPI, forcing it off after the timeout: a task."""
    from corral.compute.lifecycle import stop

    def run(report: Report) -> str:
        report(10, "ACPI power button pressed")
        return _said(stop(ctx, name))

    return _act(ctx, pool, principal, request, response, name, Op.STOP, run)


@router.post("/{name}/destroy", status_code=202, responses=ACTION_RESPONSES)
def destroy_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
) -> TaskRead:
    """Force an active VM off at once (pulling the power cord): a task."""
    from corral.compute.lifecycle import destroy

    return _act(
        ctx,
        pool,
        principal,
        request,
        response,
        name,
        Op.DESTROY,
        lambda _: _said(destroy(ctx, name)),
    )


@router.post("/{name}/pause", status_code=202, responses=ACTION_RESPONSES)
def pause_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
) -> TaskRead:
    """Stop a running VM's vCPUs: a task."""
    from corral.compute.lifecycle import pause

    return _act(
        ctx, pool, principal, request, response, name, Op.PAUSE, lambda _: _said(pause(ctx, name))
    )


@router.post("/{name}/resume", status_code=202, responses=ACTION_RESPONSES)
def resume_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
) -> TaskRead:
    """Let a paused VM's vCPUs run again: a task."""
    from corral.compute.lifecycle import resume

    return _act(
        ctx, pool, principal, request, response, name, Op.RESUME, lambda _: _said(resume(ctx, name))
    )


@router.post("/{name}/reboot", status_code=202, responses=ACTION_RESPONSES)
def reboot_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: ActionBody = None,
) -> TaskRead:
    """Reboot a running VM cleanly (ACPI power-off held, then reset): a task."""
    from corral.compute.lifecycle import reboot

    wait = body.wait if body else False

    def run(report: Report) -> str:
        report(10, "ACPI power button pressed")
        return _said(reboot(ctx, name, wait=wait))

    return _act(ctx, pool, principal, request, response, name, Op.REBOOT, run)


@router.delete("/{name}", status_code=202, responses=ACTION_RESPONSES)
def delete_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
) -> TaskRead:
    """Delete a VM that is not running, with its disks: a task (409 while it runs)."""
    from corral.compute.define import delete

    def run(_: Report) -> str:
        delete(ctx, name)
        return "deleted"

    return _act(ctx, pool, principal, request, response, name, Op.DELETE, run, action=Action.DELETE)
