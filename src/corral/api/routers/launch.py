"""``/launch``: an image, an instance type and a key pair become running instances.

A launch answers 202 with a task (``vm.launch``, ``Location: /api/v1/tasks/{id}``) that
makes the instances, boots them and waits for their SSH servers. Everything the launch's
check refuses (project, image, type, key pair, disk size, user-data, quota, the host's
capacity, a taken name) is refused before the task is queued, with its own status. Each
phase an instance finishes (clone, seed, start, boot, ready) advances the task's progress;
it ends naming each instance and where its SSH server listens.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.tasks import TaskPoolDep, task_read
from corral.api.routers.vms import require_creatable
from corral.api.schemas import ERRORS, ErrorRead, LaunchCreate, TaskRead
from corral.compute.launch import PHASES, Instance, LaunchRequest, PhaseEvent
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


@router.post("", status_code=202, responses=LAUNCH_RESPONSES)
def launch_instances(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: LaunchCreate,
) -> TaskRead:
    """Launch instances and wait until SSH answers: a task (refusals answer at once)."""
    from corral.compute.launch import launch, plan

    project_id = require_creatable(ctx, principal, body.project)
    req = LaunchRequest(
        name=body.name,
        image=body.image,
        instance_type=body.instance_type,
        keypair=body.keypair,
        user_data=body.user_data,
        count=body.count,
        disk_size=body.disk_size,
        isolated=body.isolated,
        project=body.project,
    )
    plan(ctx, req)

    def run(report: Report) -> str:
        report(0, "checking")
        return summary(launch(ctx, req, PhaseProgress(report, body.count)))

    task = pool.submit(principal, "vm.launch", Target("vm", body.name), project_id, run)
    response.headers["Location"] = request.url_for("get_task", task_id=task.id).path
    return task_read(task)
