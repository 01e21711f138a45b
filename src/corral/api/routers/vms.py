"""``/vms``: the VM list (filtered, paginated), defining a VM, one VM, changing it, and its
actions.

Defining a VM (``POST /vms``) takes milliseconds (its disks are copy-on-write clones), so it
answers 201 with the VM at once, not a task; so does changing one (``PATCH``), which only
rewrites its spec for the next start.

An action (start, stop, destroy, pause, resume, reboot, delete) answers 202 with a task
(``Location: /api/v1/tasks/{id}``) that runs it in the background. What is known before it
runs is answered at once: an unknown VM is 404, a state the operation cannot start from is
409 naming the state. Operations on one VM are serialised by its lock: a task that waits for
it says so in its detail, and one that finds the VM changed meanwhile ends as ``error`` with
the same state message.

Every VM operation is written to the audit log (``vm.create``, ``vm.update``, ``vm.start``
... ``vm.delete``) with its caller, the VM, its project and the outcome: a request refused at
once is recorded with the class of the error that refused it; an accepted action when its
task ends, ``ok`` or the class of the error that ended it, with the task's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

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
    VmCreate,
    VmRead,
)
from corral.api.schemas.vms import (
    KEPT_DISK,
    VmRebootCreate,
    VmStartCreate,
    VmStopCreate,
    VmUpdate,
)
from corral.api.tenancy import require_visible
from corral.compute.context import Corral
from corral.compute.inventory import VmView
from corral.compute.lifecycle import Outcome, Progress
from corral.compute.state import Op
from corral.compute.tasks import Report, Target, TaskPool
from corral.errors import CorralError, Forbidden

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
            DiskRead(
                name=d.name, path=d.path, image=d.image, provisioned=d.provisioned, used=d.used
            )
            for d in view.disks
        ],
        forwards=view.forwards,
        console=view.console,
        vnc=view.vnc,
        instance_type=view.instance_type,
        keypair=view.keypair,
        instance_id=view.instance_id,
        ssh=view.ssh,
    )


@router.get("", responses={404: {"model": ErrorRead, "description": "No such project."}})
def list_vms(
    ctx: CorralDep,
    principal: PrincipalDep,
    state: Annotated[State | None, Query(description="Only VMs in this state.")] = None,
    active: Annotated[
        bool | None,
        Query(
            description="Only VMs whose QEMU runs (starting, running, paused, stopping), "
            "or with false only the others."
        ),
    ] = None,
    image: Annotated[str | None, Query(max_length=63, description="Only clones of it.")] = None,
    name: Annotated[
        str | None, Query(max_length=63, description="Only names that contain this.")
    ] = None,
    project: Annotated[
        str | None, Query(max_length=63, description="Only the VMs of this project.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[VmRead]:
    """Every VM (running or not), by name, reconciled with the host."""
    from corral.access.projects import get_project
    from corral.access.scope import visible
    from corral.compute.inventory import page_vms
    from corral.compute.state import VmState
    from corral.store.models import VmRow

    where = visible(principal, VmRow.project_id)
    if project is not None:
        # Another project's name is as unknown as a name no project has.
        where = where & (VmRow.project_id == get_project(ctx, principal, project).id)
    if any("\x00" in text for text in (image or "", name or "")):
        # No name holds a NUL (and PostgreSQL refuses one in a query): nothing matches.
        return Page[VmRead](items=[], total=0, limit=limit, offset=offset)
    if image is not None:
        where = where & (VmRow.image == image)
    if name is not None:
        where = where & VmRow.name.contains(name, autoescape=True)
    states: set[str] | None = None if state is None else {state}
    if active is not None:
        wanted = {s.value for s in VmState if s.active == active}
        states = wanted if states is None else states & wanted
    views, total = page_vms(ctx, where, states, limit, offset)
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
    from corral.access.audit import audited
    from corral.compute.define import CreateRequest, create
    from corral.compute.inventory import info

    asked = body.model_dump(include={"image", "vcpus", "memory", "disk_size", "data_disks"})
    asked.update(body.model_dump(include={"cdrom", "boot"}, exclude_none=True))
    with audited(ctx, principal, "vm.create", "vm", body.name, body.project, asked):
        require_creatable(ctx, principal, body.project)
        if body.cdrom is not None and not principal.is_admin:
            raise Forbidden(
                principal.name, principal.role.value, "put a host file into", f"vm {body.name!r}"
            )
        create(
            ctx,
            CreateRequest(
                name=body.name,
                image=body.image,
                vcpus=body.vcpus,
                memory=body.memory,
                disk_size=body.disk_size,
                data_disks=tuple(body.data_disks),
                machine=body.machine,
                cpu=body.cpu,
                forwards=tuple(body.forwards),
                vnc=body.vnc,
                display=body.display,
                firmware=body.firmware,
                project=body.project,
                cdrom=body.cdrom,
                boot=body.boot,
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


def _project_of(ctx: Corral, name: str) -> str | None:
    """The name of VM ``name``'s project, for the audit log (``None``: no such VM)."""
    from sqlalchemy import select

    from corral.store.models import ProjectRow, VmRow

    if "\x00" in name:
        return None
    with ctx.db.session() as session:
        query = select(ProjectRow.name).join(VmRow, VmRow.project_id == ProjectRow.id)
        return session.scalars(query.where(VmRow.name == name)).first()


#: ``responses=`` of ``PATCH /vms/{name}``.
UPDATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {
        "model": ErrorRead,
        "description": "The caller's role may not change the VM, or a quota (named) would be "
        "exceeded.",
    },
    404: {"model": ErrorRead, "description": "No such VM (or not the caller's)."},
    409: {
        "model": ErrorRead,
        "description": "The VM runs (the message names its state), or another operation holds it.",
    },
}


@router.patch("/{name}", responses=UPDATE_RESPONSES)
def update_vm(ctx: CorralDep, principal: PrincipalDep, name: str, body: VmUpdate) -> VmRead:
    """Change a VM's vCPUs, memory, port forwards or display, for its next start; what the body
    leaves out stays. Growth counts against the project's quota."""
    from corral.access.audit import audited
    from corral.compute.inventory import info
    from corral.compute.update import UpdateRequest, update
    from corral.store.models import VmRow

    asked = body.model_dump(exclude_none=True)
    with audited(ctx, principal, "vm.update", "vm", name, _project_of(ctx, name), asked) as op:
        require_visible(ctx, principal, VmRow, "vm", name, Action.OPERATE)
        plan = update(
            ctx,
            name,
            UpdateRequest(
                vcpus=body.vcpus,
                memory=body.memory,
                forwards=None if body.forwards is None else tuple(body.forwards),
                display=body.display,
            ),
        )
        op.detail["changes"] = plan.changes
    return vm_read(info(ctx, name))


#: ``responses=`` of a VM action.
ACTION_RESPONSES = {**NOT_FOUND, **CONFLICT}


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
def _refusal_audited(
    ctx: Corral, principal: Principal, verb: str, name: str, project: str | None, asked: Any
) -> Iterator[None]:
    """Record in the audit log a request that the block refuses (and let the refusal go)."""
    from corral.access.audit import record

    try:
        yield
    except CorralError as exc:
        detail = {**asked, "error": exc.message}
        with ctx.db.session() as session:
            record(session, principal.name, verb, "vm", name, project, type(exc).__name__, detail)
        raise


#: What an action does, given where to report its progress: the task's final detail.
Work = Callable[[Progress], str]


def _act(
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
    """Check the action can start, then queue its task; audit the refusal or the outcome.

    :param asked: the action's options, for the audit log.
    """
    from corral.access.audit import audited

    verb = f"vm.{op.value}"
    project = _project_of(ctx, name)
    options = dict(asked or {})
    with _refusal_audited(ctx, principal, verb, name, project, options):
        project_id = check_operable(ctx, principal, name, op, action)

    def run(report: Report) -> str:
        options["task"] = report.task_id
        with audited(ctx, principal, verb, "vm", name, project, options) as entry:
            said = work(report)
            entry.detail["result"] = said
        return said

    task = pool.submit(principal, verb, Target("vm", name), project_id, run)
    response.headers["Location"] = request.url_for("get_task", task_id=task.id).path
    return task_read(task)


def _took(outcome: Outcome) -> str:
    return "" if outcome.seconds is None else f", ready in {outcome.seconds:.1f} s"


@router.post("/{name}/start", status_code=202, responses=ACTION_RESPONSES)
def start_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: Annotated[VmStartCreate | None, Body()] = None,
) -> TaskRead:
    """Boot a defined, shut-off or crashed VM: a task (with ``wait``, until it is ready)."""
    from corral.compute.lifecycle import start

    opts = body or VmStartCreate()

    def work(progress: Progress) -> str:
        outcome = start(ctx, name, wait=opts.wait, timeout=opts.timeout, progress=progress)
        return f"started{_took(outcome)}"

    return _act(ctx, pool, principal, request, response, name, Op.START, work, opts.model_dump())


@router.post("/{name}/stop", status_code=202, responses=ACTION_RESPONSES)
def stop_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: Annotated[VmStopCreate | None, Body()] = None,
) -> TaskRead:
    """Shut a running VM down through ACPI, forcing it off after the timeout: a task."""
    from corral.compute.lifecycle import stop

    opts = body or VmStopCreate()

    def work(progress: Progress) -> str:
        outcome = stop(ctx, name, timeout=opts.timeout, force=opts.force, progress=progress)
        return f"shut off ({outcome.detail})"

    return _act(ctx, pool, principal, request, response, name, Op.STOP, work, opts.model_dump())


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

    def work(progress: Progress) -> str:
        destroy(ctx, name, progress=progress)
        return "destroyed (forced off)"

    return _act(ctx, pool, principal, request, response, name, Op.DESTROY, work)


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

    def work(progress: Progress) -> str:
        pause(ctx, name, progress=progress)
        return "paused"

    return _act(ctx, pool, principal, request, response, name, Op.PAUSE, work)


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

    def work(progress: Progress) -> str:
        resume(ctx, name, progress=progress)
        return "resumed"

    return _act(ctx, pool, principal, request, response, name, Op.RESUME, work)


@router.post("/{name}/reboot", status_code=202, responses=ACTION_RESPONSES)
def reboot_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: Annotated[VmRebootCreate | None, Body()] = None,
) -> TaskRead:
    """Reboot a running VM cleanly (ACPI power-off held, then reset): a task."""
    from corral.compute.lifecycle import reboot

    opts = body or VmRebootCreate()

    def work(progress: Progress) -> str:
        outcome = reboot(ctx, name, wait=opts.wait, timeout=opts.timeout, progress=progress)
        return f"{outcome.detail}{_took(outcome)}"

    return _act(ctx, pool, principal, request, response, name, Op.REBOOT, work, opts.model_dump())


@router.delete("/{name}", status_code=202, responses=ACTION_RESPONSES)
def delete_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    keep_disks: Annotated[
        bool,
        Query(
            description="Keep the disks: moved to the state directory's disks/ (the task's "
            "detail names each)."
        ),
    ] = False,
) -> TaskRead:
    """Delete a VM that is not running, with its disks: a task (409 while it runs)."""
    from corral.compute.define import delete

    def work(progress: Progress) -> str:
        kept = delete(ctx, name, keep_disks=keep_disks, progress=progress)
        return "deleted" + "".join(f"{KEPT_DISK}{path}" for path in kept)

    asked = {"keep_disks": keep_disks}
    return _act(
        ctx, pool, principal, request, response, name, Op.DELETE, work, asked, Action.DELETE
    )
