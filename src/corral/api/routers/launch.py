"""``/launch``: an image, an instance type and a key pair become running instances.

A launch answers 202 with a task (``vm.launch``, ``Location: /api/v1/tasks/{id}``) that
makes the instances, boots them and waits for their SSH servers. Everything the launch's
check refuses (project, image, type, key pair, disk size, user-data, quota, the host's
capacity, a taken name) is refused before the task is queued, with its own status.

While it runs, ``GET /launch/{task_id}`` answers each instance's phases (clone, seed, start,
boot, ready: running, done with its seconds, or failed) and, at the end, how each instance
is reached, or why the launch failed; ``after``/``wait`` make it answer at the next change,
so that a client follows the launch without asking in a loop. Each phase an instance
finishes also advances the task's progress (and its detail names it), which the event
stream carries; the task ends naming each instance and where its SSH server listens. The
daemon keeps a launch's record while it runs and for the last
:data:`~corral.compute.launch_progress.KEEP` launches after they end.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.tasks import TaskId, TaskPoolDep, accepted
from corral.api.routers.vms import require_creatable
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead, TaskRead
from corral.api.schemas.launch import (
    LaunchCreate,
    LaunchErrorRead,
    LaunchInstanceRead,
    LaunchRead,
    PhaseRead,
)
from corral.compute.launch import PHASES, Instance, LaunchRequest, PhaseEvent
from corral.compute.launch_progress import Launches, LaunchProgress, LaunchView
from corral.compute.tasks import Report, Target

router = APIRouter(prefix="/launch", tags=["launch"], responses=ERRORS)

#: ``responses=`` of ``POST /launch``: the refusals known before the task is queued.
LAUNCH_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {
        "model": ErrorRead,
        "description": "The caller's role may not create, or a quota (named) would be exceeded.",
    },
    404: {
        "model": ErrorRead,
        "description": "No such project, image, instance type or key pair (or not usable).",
    },
    409: {"model": ErrorRead, "description": "A name is taken, or the host lacks capacity."},
}
#: Longest ``wait`` of ``GET /launch/{task_id}``, in seconds.
MAX_WAIT = 30.0

_launches_lock = threading.Lock()


def get_launches(request: Request) -> Launches:
    """The app's launches (made on first use)."""
    with _launches_lock:
        launches: Launches | None = getattr(request.app.state, "launches", None)
        if launches is None:
            launches = request.app.state.launches = Launches()
    return launches


LaunchesDep = Annotated[Launches, Depends(get_launches)]


class PhaseProgress:
    """Turns the :class:`PhaseEvent` of every instance into the task's percent done.

    :param report: the task's progress reporter.
    :param count: how many instances the launch makes.
    """

    def __init__(self, report: Report, count: int) -> None:
        self._report = report
        self._total = count * len(PHASES)
        self._done = 0
        self._lock = threading.Lock()

    def __call__(self, event: PhaseEvent) -> None:
        """Record one event (from any of the launch's threads)."""
        with self._lock:
            if event.status == "end":
                self._done += 1
            percent = self._done * 100 // self._total
            said = {"begin": "started", "end": "done", "fail": "failed"}[event.status]
            self._report(percent, f"{event.instance}: {event.phase} {said}")


def summary(instances: list[Instance]) -> str:
    """The task's final detail: each instance and how SSH reaches it."""
    each = ", ".join(
        f"{i.name} ({i.instance_id}) ssh {i.user}@{i.host} port {i.port}" for i in instances
    )
    word = "instance" if len(instances) == 1 else "instances"
    return f"{len(instances)} {word} ready: {each}"


def launch_read(view: LaunchView) -> LaunchRead:
    """The wire form of a launch's progress."""
    error = view.error
    return LaunchRead(
        task_id=view.task_id,
        project=view.project,
        status=view.status,
        version=view.version,
        instances=[
            LaunchInstanceRead(
                name=i.name,
                status=i.status,
                instance_id=i.instance_id,
                address=i.address,
                port=i.port,
                user=i.user,
                keypair=i.keypair,
                phases={
                    p: PhaseRead(state=v.state, seconds=v.seconds) for p, v in i.phases.items()
                },
                error=i.error,
                ssh_command=list(i.ssh_command),
            )
            for i in view.instances
        ],
        error=None
        if error is None
        else LaunchErrorRead(
            error=error.kind,
            message=error.message,
            field=error.field,
            status=error.status,
            last_lines=list(error.last_lines),
        ),
    )


@router.post("", status_code=202, responses=LAUNCH_RESPONSES)
def launch_instances(
    ctx: CorralDep,
    pool: TaskPoolDep,
    launches: LaunchesDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: LaunchCreate,
) -> TaskRead:
    """Launch instances and wait until SSH answers: a task (refusals answer at once); follow
    it with GET /launch/{task_id}."""
    from corral.compute.define import NetworkNic
    from corral.compute.launch import SSH_ADDR, launch, plan

    project_id = require_creatable(ctx, principal, body.project)
    req = LaunchRequest(
        name=body.name,
        image=body.image,
        instance_type=body.instance_type,
        keypair=body.keypair,
        user_data=body.user_data,
        count=body.count,
        disk_size=body.disk_size,
        timeout=body.timeout,
        isolated=body.isolated,
        project=body.project,
        networks=tuple(NetworkNic(n.network, n.ip, n.link) for n in body.networks),
    )
    checked = plan(ctx, req)
    progress = LaunchProgress(
        checked.project, checked.names, checked.user, checked.key.name, SSH_ADDR
    )

    def run(task_report: Report) -> str:
        task_report(0, "checking")
        percent = PhaseProgress(task_report, body.count)

        def report(event: PhaseEvent) -> None:
            progress(event)
            percent(event)

        try:
            instances = launch(ctx, req, report)
        except BaseException as exc:
            progress.failed(exc)
            raise
        progress.succeeded(instances)
        return summary(instances)

    task = pool.submit(principal, "vm.launch", Target("vm", body.name), project_id, run)
    launches.add(task.id, progress)
    return accepted(request, response, task)


@router.get("/{task_id}", responses=NOT_FOUND)
async def get_launch(
    ctx: CorralDep,
    launches: LaunchesDep,
    principal: PrincipalDep,
    task_id: TaskId,
    after: Annotated[
        int | None,
        Query(ge=0, description="The version the caller has seen: answer once it changes."),
    ] = None,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT, description="With after: seconds to wait for a change."),
    ] = 10.0,
) -> LaunchRead:
    """A launch, so far: each instance's phases, then how each is reached or why the launch
    failed (404 for a task that is no launch, or once the daemon no longer holds it)."""
    from starlette.concurrency import run_in_threadpool

    from corral.compute.tasks import get_task
    from corral.errors import NotFound

    await run_in_threadpool(get_task, ctx, principal, task_id)  # 404 unless visible
    progress = launches.get(task_id)
    if progress is None:
        raise NotFound("launch", task_id)
    if after is not None:
        await progress.changed(after, wait)
    return launch_read(progress.view())
