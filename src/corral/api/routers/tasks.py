"""``/tasks``: the "Recent Tasks" list, one task, and cancelling one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset
from corral.api.schemas import CONFLICT, ERRORS, NOT_FOUND, Page, TaskRead
from corral.compute.tasks import TaskFilter, TaskPool, TaskStatus, TaskView
from corral.errors import HostError

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=ERRORS)

Status = Literal["queued", "running", "success", "error", "cancelled"]
TaskId = Annotated[str, Path(max_length=36, description="The task's id (a UUID).")]


def get_pool(request: Request) -> TaskPool:
    """The daemon's task pool (started by the app's lifespan).

    :raise HostError: the app runs without its lifespan (no pool).
    """
    pool: TaskPool | None = getattr(request.app.state, "tasks", None)
    if pool is None:
        raise HostError("corrald's task pool is not running")
    return pool


TaskPoolDep = Annotated[TaskPool, Depends(get_pool)]


def task_read(task: TaskView) -> TaskRead:
    """The wire form of a task view."""
    return TaskRead(
        id=task.id,
        name=task.name,
        target_kind=task.target_kind,
        target_name=task.target_name,
        status=task.status.value,
        progress=task.progress,
        detail=task.detail,
        error=task.error,
        initiated_by=task.initiated_by,
        requested_at=task.requested_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
        cancellable=task.cancellable,
    )


def accepted(request: Request, response: Response, task: TaskView | TaskRead) -> TaskRead:
    """The answer to a request that queued ``task``: its wire form, with ``Location`` naming
    it (the endpoint answers 202)."""
    response.headers["Location"] = request.url_for("get_task", task_id=task.id).path
    return task if isinstance(task, TaskRead) else task_read(task)


@router.get("")
def list_tasks(
    ctx: CorralDep,
    principal: PrincipalDep,
    status: Annotated[Status | None, Query(description="Only tasks in this status.")] = None,
    name: Annotated[str | None, Query(max_length=63, description="Only this operation.")] = None,
    target_kind: Annotated[str | None, Query(max_length=32)] = None,
    target_name: Annotated[str | None, Query(max_length=255)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TaskRead]:
    """Recent tasks, newest first: those of the caller's projects (an admin's: all)."""
    from corral.compute.tasks import list_tasks as do_list

    filters = TaskFilter(
        status=TaskStatus(status) if status else None,
        name=name,
        target_kind=target_kind,
        target_name=target_name,
    )
    tasks, total = do_list(ctx, principal, filters, limit, offset)
    return Page[TaskRead](
        items=[task_read(t) for t in tasks], total=total, limit=limit, offset=offset
    )


@router.get("/{task_id}", responses=NOT_FOUND)
def get_task(ctx: CorralDep, principal: PrincipalDep, task_id: TaskId) -> TaskRead:
    """One task: poll it until its status is final (success, error or cancelled)."""
    from corral.compute.tasks import get_task as do_get

    return task_read(do_get(ctx, principal, task_id))


@router.post("/{task_id}/cancel", responses={**NOT_FOUND, **CONFLICT})
def cancel_task(ctx: CorralDep, principal: PrincipalDep, task_id: TaskId) -> TaskRead:
    """Cancel a task: a queued one at once, a running one if its operation allows it (it
    then ends as cancelled when it next checks). 409 when it has ended or cannot be."""
    from corral.compute.tasks import cancel_task as do_cancel

    return task_read(do_cancel(ctx, principal, task_id))
