"""``/vms/{name}/snapshots``: snapshots of a VM (of its disks, or with its memory), as a tree.

Taking, reverting to and deleting a snapshot answer 202 with a task, as a VM's actions do
(they take the VM's lock); what is known at once is answered at once: another project's VM
or an unknown snapshot is 404, a bad name 422, a state that forbids it or a taken name 409.
``GET .../revert-plan`` and ``GET .../delete-plan`` say what the action would do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset
from corral.api.routers.tasks import TaskPoolDep
from corral.api.routers.vm_tasks import ACTION_RESPONSES, act, vm_checked
from corral.api.schemas import ERRORS, NOT_FOUND, Page, TaskRead
from corral.api.schemas.snapshots import SnapshotCreate, SnapshotPreview, SnapshotRead
from corral.api.tenancy import require_visible
from corral.compute.lifecycle import Progress
from corral.compute.snapshots import SnapshotView
from corral.compute.state import Op
from corral.storage.snapshots import SNAPSHOT_NAME_PATTERN
from corral.store.models import VmRow

router = APIRouter(prefix="/vms", tags=["snapshots"], responses=ERRORS)

SnapName = Annotated[
    str,
    Path(pattern=SNAPSHOT_NAME_PATTERN, description="The snapshot's name.", examples=["s1"]),
]


def snapshot_read(view: SnapshotView) -> SnapshotRead:
    """The wire form of a snapshot."""
    return SnapshotRead(
        name=view.name,
        description=view.description,
        kind="memory" if view.memory_file else "disk",
        parent=view.parent,
        current=view.current,
        vm_state=view.vm_state,
        created_at=view.created_at.isoformat(),
        layers=view.layers,
        memory_file=view.memory_file,
    )


@router.get("/{name}/snapshots", responses=NOT_FOUND)
def list_snapshots(
    ctx: CorralDep, principal: PrincipalDep, name: str, limit: Limit = 100, offset: Offset = 0
) -> Page[SnapshotRead]:
    """A VM's snapshots, oldest first, each with its parent (the tree) and whether the VM's
    disks sit on it now."""
    from corral.compute.snapshots import list_snapshots as listing

    require_visible(ctx, principal, VmRow, "vm", name)
    views = listing(ctx, name)
    items = [snapshot_read(v) for v in views[offset : offset + limit]]
    return Page[SnapshotRead](items=items, total=len(views), limit=limit, offset=offset)


@router.get("/{name}/snapshots/{snap}", responses=NOT_FOUND)
def get_snapshot(
    ctx: CorralDep, principal: PrincipalDep, name: str, snap: SnapName
) -> SnapshotRead:
    """One snapshot."""
    from corral.compute.snapshots import get_snapshot as get

    require_visible(ctx, principal, VmRow, "vm", name)
    return snapshot_read(get(ctx, name, snap))


@router.post("/{name}/snapshots", status_code=202, responses=ACTION_RESPONSES)
def create_snapshot(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    body: SnapshotCreate,
) -> TaskRead:
    """Snapshot a running or stopped VM's writable disks, all at once; with ``memory``, a
    running or paused VM's RAM and device state too (409 otherwise): a task."""
    from corral.compute.snapshots import check_create, create_snapshot

    asked = body.model_dump()
    with vm_checked(ctx, principal, "vm.snapshot", name, asked):
        check_create(ctx, name, body.name, body.description)

    def work(progress: Progress) -> str:
        view = create_snapshot(ctx, name, body.name, body.description, progress, body.memory)
        return f"snapshot {view.name} taken" + (" with memory" if body.memory else "")

    op = Op.SNAPSHOT_MEMORY if body.memory else Op.SNAPSHOT
    return act(ctx, pool, principal, request, response, name, op, work, asked)


@router.get("/{name}/snapshots/{snap}/revert-plan", responses={**NOT_FOUND})
def revert_plan(
    ctx: CorralDep, principal: PrincipalDep, name: str, snap: SnapName
) -> SnapshotPreview:
    """What reverting to the snapshot would lose and keep; nothing changes."""
    from corral.compute.snapshots import preview_revert

    require_visible(ctx, principal, VmRow, "vm", name)
    return SnapshotPreview(vm=name, snapshot=snap, steps=preview_revert(ctx, name, snap).lines)


@router.post("/{name}/snapshots/{snap}/revert", status_code=202, responses=ACTION_RESPONSES)
def revert_snapshot(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    snap: SnapName,
) -> TaskRead:
    """Put a stopped VM's disks back to a disk snapshot (409 while it runs: stop it first),
    or any VM to a memory snapshot (a running one is destroyed first; the guest resumes where
    it was); what was written since its last snapshot is lost; every snapshot stays: a
    task."""
    from corral.compute.snapshots import revert_op, revert_snapshot

    asked = {"snapshot": snap}
    with vm_checked(ctx, principal, "vm.revert", name, asked):
        op = revert_op(ctx, name, snap)

    def work(progress: Progress) -> str:
        revert_snapshot(ctx, name, snap, progress)
        return f"reverted to {snap}"

    return act(ctx, pool, principal, request, response, name, op, work, asked)


@router.get("/{name}/snapshots/{snap}/delete-plan", responses={**NOT_FOUND, **ACTION_RESPONSES})
def delete_plan(
    ctx: CorralDep, principal: PrincipalDep, name: str, snap: SnapName
) -> SnapshotPreview:
    """What deleting the snapshot would merge into which layers built on it (each one, when
    several are), and how; nothing changes."""
    from corral.compute.snapshots import preview_delete

    require_visible(ctx, principal, VmRow, "vm", name)
    return SnapshotPreview(vm=name, snapshot=snap, steps=preview_delete(ctx, name, snap).lines)


@router.delete("/{name}/snapshots/{snap}", status_code=202, responses=ACTION_RESPONSES)
def delete_snapshot(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: str,
    snap: SnapName,
) -> TaskRead:
    """Delete a snapshot, also while the VM runs, merging its layer into every layer built on
    it (409 when a linked clone reads one of them): a task."""
    from corral.compute.snapshots import delete_snapshot, preview_delete

    asked = {"snapshot": snap}
    with vm_checked(ctx, principal, "vm.snapshot-delete", name, asked):
        preview_delete(ctx, name, snap)

    def work(progress: Progress) -> str:
        delete_snapshot(ctx, name, snap, progress)
        return f"snapshot {snap} deleted"

    return act(ctx, pool, principal, request, response, name, Op.SNAPSHOT_DELETE, work, asked)
