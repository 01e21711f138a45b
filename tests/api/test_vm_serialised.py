"""Concurrent requests on one VM are serialised, against a real ``corral serve`` and a real
running guest: conflicting actions fired at the same moment each end in success or a clean
refusal (409 at once, or a task ending with the state error), no two of them work on the VM
at the same time, and the VM ends in the state of the last one that succeeded.

What shows when an operation works on the VM is its task's progress: an operation reports
its first phase once it holds the VM's lock and its last one before it lets go, and every
report is an event with an id that grows (``GET /events``). The reports of two operations
that held the lock one after the other cannot interleave.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.schemas.vms import VmRebootCreate, VmStopCreate
from corral.client import Client
from corral.client.transport import ApiError
from corral.compute.context import Corral
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests import daemons
from tests.integration.conftest import cli

pytestmark = [pytest.mark.tcg, pytest.mark.slow]

#: The state each action leaves a VM in when it succeeds.
LEAVES = {
    "start": "running",
    "resume": "running",
    "reboot": "running",
    "pause": "paused",
    "stop": "shutoff",
    "destroy": "shutoff",
}


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A state directory with the reference image, and its daemon started."""
    root = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    ctx = Corral(Home(root))
    ensure_reference(ctx)
    ctx.close()
    started = cli(root, "serve", "--detach", timeout=60)
    assert started.returncode == 0, started.stderr
    yield root
    cli(root, "destroy", "race", timeout=60)
    daemons.stop(root)
    for pid_file in (root / "vms").glob("*/qemu.pid"):
        subprocess.run(["pkill", "-9", "-F", str(pid_file)], check=False)
    shutil.rmtree(root, ignore_errors=True)


def held_events(sock: Path, after: int | None) -> dict[str, Any]:
    """The events the daemon holds after event ``after`` (its JSON poll)."""
    headers = {} if after is None else {"Last-Event-ID": str(after)}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as http:
        answer = http.get("http://corrald/api/v1/events", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_conflicting_actions_on_one_vm_run_one_after_the_other(home: Path) -> None:
    sock = home / "corrald.sock"
    assert cli(home, "create", "race", "--image", "reference", "--memory", "128M").returncode == 0
    started = cli(home, "start", "race", "--wait")
    assert started.returncode == 0, started.stderr
    before = held_events(sock, None)["last_id"]

    actions = ["pause", "reboot", "stop", "resume", "destroy", "start"]
    barrier = threading.Barrier(len(actions), timeout=30)
    answers: dict[str, Any] = {}

    def fire(action: str) -> None:
        with Client(socket=sock) as api:
            barrier.wait()
            try:
                # A guest that just reset may not heed the ACPI button yet: short timeouts.
                if action == "stop":
                    answers[action] = api.stop_vm("race", VmStopCreate(timeout=10))
                elif action == "reboot":
                    answers[action] = api.reboot_vm("race", VmRebootCreate(timeout=10))
                else:
                    answers[action] = api.vm_action("race", action)
            except ApiError as exc:
                answers[action] = exc

    threads = [threading.Thread(target=fire, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == sorted(actions)

    tasks: dict[str, Any] = {}  # task id -> its final view
    with Client(socket=sock) as api:
        for action, answer in answers.items():
            if isinstance(answer, ApiError):
                # Refused at once: a state the action cannot start from, named.
                assert answer.status == 409 and answer.kind == "StateError", answer
                assert answer.message.startswith(f"cannot {action} vm 'race': it is ")
                continue
            done = api.wait_task(answer.id)
            tasks[done.id] = done
            if done.status != "success":
                assert done.status == "error", done
                assert done.error is not None
                assert done.error.startswith(f"cannot {action} vm 'race': it is "), done
        final = api.get_vm("race")
    assert tasks, "no action was accepted"

    # The phases each operation reported while it held the VM, in event order.
    events = held_events(sock, before)
    assert not events["lost"]
    spans: dict[str, list[int]] = {}
    for event in events["items"]:
        data = event["data"]
        if event["kind"] != "task" or data["id"] not in tasks:
            continue
        if data["status"] == "running" and data["progress"] >= 10:
            spans.setdefault(data["id"], []).append(event["id"])
    succeeded = [t for t in tasks.values() if t.status == "success"]
    assert succeeded and all(t.id in spans for t in succeeded)
    order = sorted(spans, key=lambda task_id: spans[task_id][0])
    for first, second in itertools.pairwise(order):
        assert spans[first][-1] < spans[second][0], (
            f"{tasks[first].name} and {tasks[second].name} worked on the VM at the same time"
        )
    # The VM is where the last operation that succeeded left it.
    last = [tasks[task_id] for task_id in order if tasks[task_id].status == "success"][-1]
    assert final.state == LEAVES[last.name.removeprefix("vm.")], (
        [(tasks[i].name, tasks[i].status) for i in order],
        final.state,
    )
