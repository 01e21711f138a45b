"""Tasks: long operations run in the background, recorded from request to end.

::

    queued ──> running ──> success
       │          ├──────> error       (a CorralError's message; or interrupted by a crash)
       └──────────┴──────> cancelled   (queued: always; running: if the operation allows it)

:meth:`TaskPool.submit` records a task ``queued`` and returns at once; a bounded pool of
threads runs the operation, which reports its progress through a :class:`Report`. Every
change is committed as it happens, so the "Recent Tasks" list (:func:`list_tasks`) shows
it live and the record survives the daemon. Each pool has its own ``daemon_id``: a task
found unfinished under another id was interrupted, and :func:`recover` ends it as ``error``
and reconciles its VM with the host.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select, update

from corral.access.principal import Action, Principal, authorize
from corral.access.scope import visible
from corral.compute.context import Corral
from corral.errors import Conflict, CorralError, NotFound
from corral.store.models import TaskRow, as_utc, utcnow

log = logging.getLogger(__name__)

#: Threads that run tasks at once; more tasks wait ``queued``.
WORKERS = 4
#: Most tasks one :func:`list_tasks` returns.
MAX_LIMIT = 1000
#: Why :func:`recover` ends a task its daemon left unfinished.
INTERRUPTED = "interrupted: corrald stopped before it finished"
#: Why :meth:`TaskPool.shutdown` ends a task that never started.
NOT_STARTED = "interrupted: corrald stopped before it started"
#: Called with the state directory and a task's view after each change of the task's
#: status or progress (the event broker, :mod:`corral.compute.events`, listens here).
listeners: list[Callable[[Corral, TaskView], None]] = []


class TaskStatus(StrEnum):
    """Where a task is; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Whether the task has ended."""
        return self in (TaskStatus.SUCCESS, TaskStatus.ERROR, TaskStatus.CANCELLED)


@dataclass(frozen=True)
class Target:
    """What a task works on."""

    kind: str
    name: str


@dataclass(frozen=True)
class TaskView:
    """A task as listings present it."""

    id: str
    name: str
    target_kind: str
    target_name: str
    project_id: str | None
    status: TaskStatus
    progress: int
    detail: str
    error: str | None
    initiated_by: str
    requested_at: str
    started_at: str | None
    completed_at: str | None
    #: Whether :func:`cancel_task` would accept it now.
    cancellable: bool


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks to list; every field left ``None`` matches everything."""

    status: TaskStatus | None = None
    #: An operation (``vm.start``).
    name: str | None = None
    target_kind: str | None = None
    target_name: str | None = None


class TaskCancelled(Exception):
    """Raised by :meth:`Report.check_cancelled` to end a cancellable operation early."""


class Report:
    """What a running operation gets: progress reports and the cancellation flag."""

    def __init__(self, ctx: Corral, task_id: str) -> None:
        self._ctx = ctx
        self.task_id = task_id

    def __call__(self, progress: int, detail: str | None = None) -> None:
        """Record ``progress`` percent done (clamped to 0-99) and what is going on."""
        values: dict[str, object] = {"progress": max(0, min(99, progress))}
        if detail is not None:
            values["detail"] = detail
        with self._ctx.db.session() as session:
            session.execute(update(TaskRow).where(TaskRow.id == self.task_id).values(**values))
        _changed(self._ctx, self.task_id)

    def cancelled(self) -> bool:
        """Whether someone asked to cancel the task."""
        with self._ctx.db.session() as session:
            flag = session.scalar(
                select(TaskRow.cancel_requested).where(TaskRow.id == self.task_id)
            )
        return bool(flag)

    def check_cancelled(self) -> None:
        """:raise TaskCancelled: someone asked to cancel the task."""
        if self.cancelled():
            raise TaskCancelled()


#: An operation: runs with a :class:`Report`, returns what it did (the task's final detail).
Operation = Callable[[Report], str | None]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def view(row: TaskRow) -> TaskView:
    """The view of a task's row."""
    status = TaskStatus(row.status)
    return TaskView(
        id=row.id,
        name=row.name,
        target_kind=row.target_kind,
        target_name=row.target_name,
        project_id=row.project_id,
        status=status,
        progress=row.progress,
        detail=row.detail,
        error=row.error,
        initiated_by=row.initiated_by,
        requested_at=as_utc(row.requested_at).isoformat(),
        started_at=_iso(row.started_at),
        completed_at=_iso(row.completed_at),
        cancellable=status is TaskStatus.QUEUED
        or (status is TaskStatus.RUNNING and row.cancellable and not row.cancel_requested),
    )


class TaskPool:
    """The threads that run one daemon's tasks.

    :param workers: threads that run tasks at once.
    """

    def __init__(self, ctx: Corral, workers: int = WORKERS) -> None:
        self.ctx = ctx
        #: This daemon instance; stamped on every task it runs.
        self.daemon_id = str(uuid.uuid4())
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="task")

    def submit(
        self,
        principal: Principal,
        name: str,
        target: Target,
        project_id: str | None,
        fn: Operation,
        cancellable: bool = False,
    ) -> TaskView:
        """Record the task ``queued`` and run ``fn`` on a worker thread.

        :param name: the operation, ``<kind>.<verb>``: ``vm.start``.
        :param project_id: the target's project (who may see the task).
        :param cancellable: ``fn`` checks :meth:`Report.cancelled` and may be cancelled while
            it runs.
        :return: the task as recorded (``queued``).
        """
        row = TaskRow(
            id=str(uuid.uuid4()),
            name=name,
            target_kind=target.kind,
            target_name=target.name,
            project_id=project_id,
            status=TaskStatus.QUEUED.value,
            progress=0,
            detail="queued",
            error=None,
            initiated_by=principal.name,
            requested_at=utcnow(),
            cancellable=cancellable,
            cancel_requested=False,
            daemon_id=self.daemon_id,
        )
        with self.ctx.db.session() as session:
            session.add(row)
        task = view(row)
        _notify(self.ctx, task)
        self._executor.submit(self._run, row.id, fn)
        return task

    def _run(self, task_id: str, fn: Operation) -> None:
        ctx = self.ctx
        with ctx.db.session() as session:
            started = session.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.QUEUED.value)
                .values(status=TaskStatus.RUNNING.value, started_at=utcnow(), detail="running")
            )
        if started.rowcount != 1:  # type: ignore[attr-defined]
            return  # cancelled while queued
        _changed(ctx, task_id)
        status, detail, error = TaskStatus.SUCCESS, "done", None
        try:
            detail = fn(Report(ctx, task_id)) or detail
        except TaskCancelled:
            status, detail = TaskStatus.CANCELLED, "cancelled while running"
        except CorralError as exc:
            status, detail, error = TaskStatus.ERROR, failure_detail(exc), exc.message
        except Exception as exc:  # a bug: the task still ends, and says so
            log.exception("task %s failed", task_id)
            status, detail, error = TaskStatus.ERROR, "failed", f"internal error: {exc!r}"
        _finish(ctx, task_id, status, detail, error)

    def shutdown(self) -> None:
        """Let running tasks finish; end those that never started as ``error``."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self.ctx.db.session() as session:
            session.execute(
                update(TaskRow)
                .where(
                    TaskRow.daemon_id == self.daemon_id,
                    TaskRow.status == TaskStatus.QUEUED.value,
                )
                .values(
                    status=TaskStatus.ERROR.value,
                    error=NOT_STARTED,
                    detail="failed",
                    completed_at=utcnow(),
                )
            )


def failure_detail(exc: CorralError) -> str:
    """What a failed task's detail says beyond its error: QEMU's last words and command line,
    or the guest's last console lines, one per line; else ``failed``."""
    from corral.errors import GuestTimeout, LaunchError

    if isinstance(exc, LaunchError):
        return "\n".join([*exc.output, f"command: {' '.join(exc.argv)}"])
    if isinstance(exc, GuestTimeout) and exc.last_lines:
        return "\n".join(["last console lines:", *exc.last_lines])
    return "failed"


def _finish(ctx: Corral, task_id: str, status: TaskStatus, detail: str, error: str | None) -> None:
    values: dict[str, object] = {
        "status": status.value,
        "detail": detail,
        "error": error,
        "completed_at": utcnow(),
    }
    if status is TaskStatus.SUCCESS:
        values["progress"] = 100
    with ctx.db.session() as session:
        session.execute(update(TaskRow).where(TaskRow.id == task_id).values(**values))
    _changed(ctx, task_id)


def _changed(ctx: Corral, task_id: str) -> None:
    """Tell the :data:`listeners` that task ``task_id`` changed."""
    if not listeners:
        return
    with ctx.db.session() as session:
        row = session.get(TaskRow, task_id)
    if row is not None:
        _notify(ctx, view(row))


def _notify(ctx: Corral, task: TaskView) -> None:
    for listener in list(listeners):
        try:
            listener(ctx, task)
        except Exception:  # a listener's bug must not fail the task
            log.exception("task listener %r failed", listener)


def list_tasks(
    ctx: Corral,
    principal: Principal,
    filters: TaskFilter | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[TaskView], int]:
    """The tasks ``principal`` may see (its projects'; an admin's: all), newest first.

    :return: one page of tasks and how many match over all pages.
    """
    f = filters or TaskFilter()
    if any("\x00" in (text or "") for text in (f.name, f.target_kind, f.target_name)):
        return [], 0  # no name holds a NUL (and PostgreSQL refuses one in a query)
    query = select(TaskRow).where(visible(principal, TaskRow.project_id))  # type: ignore[arg-type]
    for column, wanted in (
        (TaskRow.status, f.status.value if f.status else None),
        (TaskRow.name, f.name),
        (TaskRow.target_kind, f.target_kind),
        (TaskRow.target_name, f.target_name),
    ):
        if wanted is not None:
            query = query.where(column == wanted)
    with ctx.db.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.order_by(TaskRow.requested_at.desc(), TaskRow.id)
            .limit(min(limit, MAX_LIMIT))
            .offset(offset)
        ).all()
        return [view(row) for row in rows], total


def _find(ctx: Corral, principal: Principal, task_id: str, action: Action) -> TaskRow:
    with ctx.db.session() as session:
        row = session.get(TaskRow, task_id) if "\x00" not in task_id else None
    if row is None:
        raise NotFound("task", task_id)
    authorize(principal, action, "task", task_id, row.project_id)
    return row


def get_task(ctx: Corral, principal: Principal, task_id: str) -> TaskView:
    """One task.

    :raise NotFound: no such task, or not in a project ``principal`` may read.
    """
    return view(_find(ctx, principal, task_id, Action.READ))


def cancel_task(ctx: Corral, principal: Principal, task_id: str) -> TaskView:
    """Cancel a task: at once if it is queued; a running one when it next checks, if its
    operation allows it.

    :raise NotFound: no such task, or not visible to ``principal``.
    :raise Forbidden: ``principal`` may read the task but not operate in its project.
    :raise Conflict: it has ended, or it runs an operation that cannot be cancelled.
    """
    row = _find(ctx, principal, task_id, Action.OPERATE)
    with ctx.db.session() as session:
        queued = session.execute(
            update(TaskRow)
            .where(TaskRow.id == task_id, TaskRow.status == TaskStatus.QUEUED.value)
            .values(
                status=TaskStatus.CANCELLED.value,
                cancel_requested=True,
                detail="cancelled before it started",
                completed_at=utcnow(),
            )
        )
        if queued.rowcount != 1:  # type: ignore[attr-defined]
            asked = session.execute(
                update(TaskRow)
                .where(
                    TaskRow.id == task_id,
                    TaskRow.status == TaskStatus.RUNNING.value,
                    TaskRow.cancellable.is_(True),
                )
                .values(cancel_requested=True, detail="cancel requested")
            )
            if asked.rowcount != 1:  # type: ignore[attr-defined]
                current = session.get(TaskRow, task_id)
                status = current.status if current is not None else row.status
                why = "it has ended" if TaskStatus(status).final else "its operation cannot be"
                raise Conflict(f"cannot cancel task {task_id}: it is {status}; {why} cancelled")
    _changed(ctx, task_id)
    return get_task(ctx, principal, task_id)


def recover(ctx: Corral, daemon_id: str) -> list[TaskView]:
    """End the tasks another daemon instance left ``queued`` or ``running`` as ``error``
    (:data:`INTERRUPTED`), and bring each one's VM record in line with the host.

    Run at daemon start, before any task of ``daemon_id`` runs.

    :return: the tasks it ended.
    """
    from corral.compute import records
    from corral.compute.lifecycle import vm_lock

    unfinished = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
    with ctx.db.session() as session:
        rows = session.scalars(
            select(TaskRow).where(TaskRow.status.in_(unfinished), TaskRow.daemon_id != daemon_id)
        ).all()
        for row in rows:
            row.status = TaskStatus.ERROR.value
            row.error = INTERRUPTED
            row.detail = "failed"
            row.completed_at = utcnow()
        ended = [view(row) for row in rows]
    for task in ended:
        _notify(ctx, task)
    for name in sorted({t.target_name for t in ended if t.target_kind == "vm"}):
        try:
            with vm_lock(ctx, name), ctx.db.session() as session:
                records.reconcile(records.load(ctx, session, name))
        except NotFound:
            continue  # an interrupted delete got that far
        except CorralError as exc:
            log.warning("cannot reconcile vm %s after an interrupted task: %s", name, exc)
    return ended
