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

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel

from corral.access.principal import Action, Principal
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset
from corral.api.routers.tasks import TaskPoolDep
from corral.api.routers.vm_tasks import ACTION_RESPONSES, act, project_of
from corral.api.schemas import (
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
from corral.compute.tasks import TaskPool
from corral.errors import Forbidden

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
    from corral.compute.define import CreateRequest, NetworkNic, create
    from corral.compute.inventory import info

    asked = body.model_dump(include={"image", "vcpus", "memory", "disk_size", "data_disks"})
    asked.update(body.model_dump(include={"cdrom", "boot"}, exclude_none=True))
    if body.networks:
        asked["networks"] = [n.network for n in body.networks]
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
                networks=tuple(NetworkNic(n.network, n.ip, n.link) for n in body.networks),
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
    with audited(ctx, principal, "vm.update", "vm", name, project_of(ctx, name), asked) as op:
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


def _took(outcome: Outcome) -> str:
    return "" if outcome.seconds is None else f", ready in {outcome.seconds:.1f} s"


def _start(ctx: Corral, name: str, opts: VmStartCreate, progress: Progress) -> str:
    from corral.compute.lifecycle import start

    outcome = start(ctx, name, wait=opts.wait, timeout=opts.timeout, progress=progress)
    return f"started{_took(outcome)}"


def _stop(ctx: Corral, name: str, opts: VmStopCreate, progress: Progress) -> str:
    from corral.compute.lifecycle import stop

    outcome = stop(ctx, name, timeout=opts.timeout, force=opts.force, progress=progress)
    return f"shut off ({outcome.detail})"


def _destroy(ctx: Corral, name: str, opts: None, progress: Progress) -> str:
    from corral.compute.lifecycle import destroy

    destroy(ctx, name, progress=progress)
    return "destroyed (forced off)"


def _pause(ctx: Corral, name: str, opts: None, progress: Progress) -> str:
    from corral.compute.lifecycle import pause

    pause(ctx, name, progress=progress)
    return "paused"


def _resume(ctx: Corral, name: str, opts: None, progress: Progress) -> str:
    from corral.compute.lifecycle import resume

    resume(ctx, name, progress=progress)
    return "resumed"


def _reboot(ctx: Corral, name: str, opts: VmRebootCreate, progress: Progress) -> str:
    from corral.compute.lifecycle import reboot

    outcome = reboot(ctx, name, wait=opts.wait, timeout=opts.timeout, progress=progress)
    return f"{outcome.detail}{_took(outcome)}"


@dataclass(frozen=True)
class VmAction:
    """One action on a VM: ``POST /vms/{name}/<op>``, answered 202 with its task."""

    #: The operation: the path's last segment; the task and the audit log say ``vm.<op>``.
    op: Op
    #: What the endpoint does, as the OpenAPI document describes it.
    doc: str
    #: The action's work on a VM, given the request's options (``None`` for an action
    #: without a body) and where to report progress: the task's final detail.
    run: Callable[[Corral, str, Any, Progress], str]
    #: The schema of the action's optional request body; a missing body is its defaults.
    body: type[BaseModel] | None = None


#: The actions, in the order the OpenAPI document lists them.
ACTIONS = (
    VmAction(
        Op.START,
        "Boot a defined, shut-off or crashed VM: a task (with ``wait``, until it is ready).",
        _start,
        VmStartCreate,
    ),
    VmAction(
        Op.STOP,
        "Shut a running VM down through ACPI, forcing it off after the timeout: a task.",
        _stop,
        VmStopCreate,
    ),
    VmAction(
        Op.DESTROY, "Force an active VM off at once (pulling the power cord): a task.", _destroy
    ),
    VmAction(Op.PAUSE, "Stop a running VM's vCPUs: a task.", _pause),
    VmAction(Op.RESUME, "Let a paused VM's vCPUs run again: a task.", _resume),
    VmAction(
        Op.REBOOT,
        "Reboot a running VM cleanly (ACPI power-off held, then reset): a task.",
        _reboot,
        VmRebootCreate,
    ),
)


def _endpoint(action: VmAction) -> Callable[..., TaskRead]:
    """The endpoint of ``action``, its signature (what FastAPI reads) naming its body."""

    def endpoint(
        ctx: Corral,
        pool: TaskPool,
        principal: Principal,
        request: Request,
        response: Response,
        name: str,
        body: BaseModel | None = None,
    ) -> TaskRead:
        opts = body if body is not None or action.body is None else action.body()
        asked = None if opts is None else opts.model_dump()

        def work(progress: Progress) -> str:
            return action.run(ctx, name, opts, progress)

        return act(ctx, pool, principal, request, response, name, action.op, work, asked)

    def given(name: str, annotation: Any, **default: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, **default, annotation=annotation
        )

    params = [
        given("ctx", CorralDep),
        given("pool", TaskPoolDep),
        given("principal", PrincipalDep),
        given("request", Request),
        given("response", Response),
        given("name", str),
    ]
    if action.body is not None:
        params.append(given("body", Annotated[action.body | None, Body()], default=None))
    # What FastAPI reads; a function's type declares no __signature__, hence setattr.
    signature = inspect.Signature(params, return_annotation=TaskRead)
    setattr(endpoint, "__signature__", signature)  # noqa: B010
    endpoint.__name__ = endpoint.__qualname__ = f"{action.op.value}_vm"
    endpoint.__doc__ = action.doc
    return endpoint


for _action in ACTIONS:
    router.add_api_route(
        f"/{{name}}/{_action.op.value}",
        _endpoint(_action),
        methods=["POST"],
        status_code=202,
        responses=ACTION_RESPONSES,
    )


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
    return act(ctx, pool, principal, request, response, name, Op.DELETE, work, asked, Action.DELETE)
