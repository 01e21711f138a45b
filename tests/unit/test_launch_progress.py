"""A launch's progress record: phases as they come, the outcome, versions and waiting for them."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from corral.compute.launch import Instance, LaunchFailed, PhaseEvent
from corral.compute.launch_progress import Launches, LaunchProgress
from corral.errors import GuestTimeout, InvalidInput, LaunchError


def progress(*names: str) -> LaunchProgress:
    return LaunchProgress("p1", names, "root", "k", "127.0.0.1")


def test_phases_and_statuses_follow_the_events() -> None:
    p = progress("web-1", "web-2")
    first = p.view()
    assert first.status == "running" and first.version == 0 and not first.final
    assert [(i.name, i.status, i.phases) for i in first.instances] == [
        ("web-1", "pending", {}),
        ("web-2", "pending", {}),
    ]
    p(PhaseEvent("web-1", "clone", "begin", None, "i-1"))
    p(PhaseEvent("web-1", "clone", "end", 0.5, "i-1", 2201))
    p(PhaseEvent("web-1", "seed", "begin", None, "i-1", 2201))
    now = p.view()
    one = now.instances[0]
    assert now.version == 3
    assert one.instance_id == "i-1" and one.port == 2201 and one.status == "pending"
    assert [(k, v.state, v.seconds) for k, v in one.phases.items()] == [
        ("clone", "done", 0.5),
        ("seed", "running", None),
    ]
    assert now.instances[1].phases == {}
    p(PhaseEvent("web-1", "seed", "end", 0.1))
    p(PhaseEvent("web-1", "start", "begin"))
    p(PhaseEvent("web-1", "start", "end", 0.2))
    assert p.view().instances[0].status == "running"
    p(PhaseEvent("web-1", "boot", "begin"))
    p(PhaseEvent("web-1", "boot", "end", 3.0))
    p(PhaseEvent("web-1", "ready", "begin"))
    p(PhaseEvent("web-1", "ready", "end", 1.0))
    one = p.view().instances[0]
    assert one.status == "ready"
    assert list(one.phases) == ["clone", "seed", "start", "boot", "ready"]
    assert p.view().instances[0].port == 2201  # kept when later events do not carry it
    p(PhaseEvent("nobody", "clone", "begin"))  # not an instance of this launch
    assert [i.name for i in p.view().instances] == ["web-1", "web-2"]


def test_success_names_how_each_instance_is_reached() -> None:
    p = progress("web")
    p.bind("task-1")
    ready = Instance("web", "i-9", "root", "127.0.0.1", 2209, None, status="ready")
    ready.ssh_command = ["ssh", "-p", "2209", "root@127.0.0.1"]
    p.succeeded([ready])
    view = p.view()
    assert view.task_id == "task-1" and view.status == "success" and view.final
    (web,) = view.instances
    assert (web.status, web.instance_id, web.port) == ("ready", "i-9", 2209)
    assert web.ssh_command == ("ssh", "-p", "2209", "root@127.0.0.1")
    assert view.error is None
    version = view.version
    p(PhaseEvent("web", "ready", "fail", 1.0))  # nothing changes once it has ended
    assert p.view().version == version


def test_not_ready_keeps_the_instances_and_the_console() -> None:
    p = progress("a", "b")
    ok = Instance("a", "i-a", "root", "127.0.0.1", 2200, None, status="ready")
    late = Instance("b", "i-b", "root", "127.0.0.1", 2201, None, status="not ready")
    late.error = GuestTimeout("b", "line 'never'", 8.0, ("corral-heartbeat 1",))
    p.failed(LaunchFailed([ok, late]))
    view = p.view()
    assert view.status == "error"
    assert [(i.name, i.status) for i in view.instances] == [("a", "ready"), ("b", "not ready")]
    assert view.instances[1].error is not None and "never" in view.instances[1].error
    assert view.error is not None
    assert view.error.kind == "LaunchFailed" and view.error.status == 504
    assert view.error.last_lines == ("corral-heartbeat 1",)


def test_a_failure_before_waiting_removed_every_instance() -> None:
    p = progress("f-1", "f-2")
    p(PhaseEvent("f-1", "start", "end", 0.1))
    p.failed(LaunchError(["qemu-system-x86_64", "-x"], 1, ["injected failure"]))
    view = p.view()
    assert [i.status for i in view.instances] == ["removed", "removed"]
    assert view.error is not None and view.error.kind == "LaunchError"
    assert view.error.last_lines == ("injected failure", "command: qemu-system-x86_64 -x")
    refused = progress("x")
    refused.failed(InvalidInput("name", "bad"))
    said = refused.view().error
    assert said is not None
    assert (said.kind, said.field, said.status) == ("InvalidInput", "name", 422)
    bug = progress("y")
    bug.failed(RuntimeError("boom"))
    error = bug.view().error
    assert error is not None and error.kind == "InternalError" and error.status == 500


def test_waiting_answers_at_the_next_change() -> None:
    p = progress("web")

    async def scenario() -> tuple[float, float, float]:
        start = time.monotonic()
        await p.changed(0, 0.2)  # nothing happens: waits the whole time
        idle = time.monotonic() - start
        feeder = threading.Timer(0.1, p, args=(PhaseEvent("web", "clone", "begin"),))
        start = time.monotonic()
        feeder.start()
        await p.changed(0, 20.0)  # a change from another thread wakes it
        woken = time.monotonic() - start
        start = time.monotonic()
        await p.changed(0, 20.0)  # already past version 0: at once
        at_once = time.monotonic() - start
        return idle, woken, at_once

    idle, woken, at_once = asyncio.run(scenario())
    assert idle >= 0.2
    assert 0.05 <= woken < 5.0
    assert at_once < 1.0
    assert p.version == 1


def test_an_ended_launch_does_not_wait() -> None:
    p = progress("web")
    p.failed(InvalidInput("name", "bad"))
    start = time.monotonic()
    asyncio.run(p.changed(p.version, 20.0))
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("keep", [0, 2])
def test_launches_keep_the_running_and_the_last_ended(keep: int) -> None:
    launches = Launches(keep=keep)
    running = progress("r")
    launches.add("t-running", running)
    for n in range(4):
        ended = progress(f"e{n}")
        launches.add(f"t-{n}", ended)
        ended.succeeded([])
    launches.add("t-new", progress("n"))  # adding is when ended ones are let go
    assert launches.get("t-running") is running
    assert launches.get("t-new") is not None
    held = [n for n in range(4) if launches.get(f"t-{n}") is not None]
    assert held == list(range(4))[4 - keep :]
    assert running.view().task_id == "t-running"
