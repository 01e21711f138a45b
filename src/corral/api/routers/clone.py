"""``POST /vms/{name}/clone``: a new VM from a VM's disks, now or at one of its snapshots.

A task, as a VM's actions are (it takes the source's lock); what is known at once is answered
at once: another project's VM or an unknown snapshot is 404, a bad field 422, a name taken
409.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.tasks import TaskPoolDep
from corral.api.routers.vm_tasks import ACTION_RESPONSES, act, vm_checked
from corral.api.routers.vms import CREATE_RESPONSES, require_creatable
from corral.api.schemas import ERRORS, TaskRead
from corral.api.schemas.clone import CloneCreate
from corral.compute.lifecycle import Progress
from corral.compute.state import Op

router = APIRouter(prefix="/vms", tags=["vms"], responses=ERRORS)


@router.post("/{name}/clone", status_code=202, responses={**ACTION_RESPONSES, **CREATE_RESPONSES})
def clone_vm(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: CloneCreate,
) -> TaskRead:
    """Clone a VM, linked or full, from its current disks (stopped) or a snapshot: a task.

    The clone has a new UUID, MACs, cloud-init instance id and SSH forward; it starts
    ``defined`` (or running, with ``start``)."""
    from corral.compute import lifecycle
    from corral.compute.clone import CloneRequest, check_clone, clone

    asked = body.model_dump()
    with vm_checked(ctx, principal, "vm.clone", name, asked) as source_project:
        project = body.project or source_project or "default"
        req = CloneRequest(name, body.name, body.mode, body.snapshot, project)
        require_creatable(ctx, principal, project)
        check_clone(ctx, req)
    op = Op.CLONE if body.snapshot is None else Op.CLONE_SNAPSHOT

    def work(progress: Progress) -> str:
        clone(ctx, req, progress)
        if body.start:
            progress(96, f"starting vm {body.name}")
            lifecycle.start(ctx, body.name)
        return f"cloned into {body.name} ({body.mode})"

    return act(ctx, pool, principal, request, response, name, op, work, asked)
