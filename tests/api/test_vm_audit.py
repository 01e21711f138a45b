"""The audit log of VM operations, with real QEMU: a create and each action are recorded
with who asked, the VM, its project and the outcome; a request refused at once with the
class of its error (nothing else happens), an accepted action when its task ends, with the
task's id, ``ok`` or the class of the error that ended it; the task's progress shows the
operation's phases.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from corral.access.local import local_principal
from corral.access.tokens import create_token
from corral.api.app import create_app
from corral.compute.context import Corral
from tests.api.support import (
    API,
    FINAL,
    act,
    admin_client,
    audit_entries,
    state_dir,
    wait_task,
)

pytestmark = pytest.mark.tcg


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    """A state directory with the reference image, project p1 and its viewer vic."""
    with state_dir("va-", ["p1"], {"vic": ("viewer", ["p1"])}) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


entries = audit_entries


def test_every_operation_is_audited_with_its_outcome(ctx: Corral, api: TestClient) -> None:
    made = api.post(
        f"{API}/vms",
        json={"name": "a-life", "image": "reference", "memory": "128M", "project": "p1"},
    )
    assert made.status_code == 201, made.text
    tasks = {}
    for action in ("start", "pause", "resume", "destroy"):
        task = act(api, "a-life", action)
        assert task["status"] == "success", task
        tasks[action] = task
    refused = api.post(f"{API}/vms/a-life/resume")
    assert refused.status_code == 409
    deleted = api.delete(f"{API}/vms/a-life", params={"keep_disks": "false"})
    assert deleted.status_code == 202
    tasks["delete"] = wait_task(api, deleted.json()["id"])
    assert tasks["delete"]["status"] == "success"

    log = entries(api, "a-life")
    assert [(e["action"], e["outcome"]) for e in log] == [
        ("vm.create", "ok"),
        ("vm.start", "ok"),
        ("vm.pause", "ok"),
        ("vm.resume", "ok"),
        ("vm.destroy", "ok"),
        ("vm.resume", "StateError"),
        ("vm.delete", "ok"),
    ]
    assert {e["project"] for e in log} == {"p1"}
    assert all(e["actor"].startswith("local:") for e in log)
    by_action = {e["action"]: e for e in log if e["outcome"] == "ok"}
    for action, task in tasks.items():
        assert by_action[f"vm.{action}"]["detail"]["task"] == task["id"]
        assert by_action[f"vm.{action}"]["detail"]["result"] == task["detail"]
    assert by_action["vm.create"]["detail"]["image"] == "reference"
    assert by_action["vm.delete"]["detail"]["keep_disks"] is False
    assert log[5]["detail"]["error"] == (
        "cannot resume vm 'a-life': it is shutoff; resume needs paused"
    )
    assert "task" not in log[5]["detail"]  # refused before any task existed
    # What each task says it did is what the CLI prints after "VM a-life".
    assert tasks["start"]["detail"] == "started"
    assert tasks["pause"]["detail"] == "paused"
    assert tasks["resume"]["detail"] == "resumed"
    assert tasks["destroy"]["detail"] == "destroyed (forced off)"
    assert tasks["delete"]["detail"] == "deleted"


def test_a_task_that_fails_is_audited_with_its_error_class(ctx: Corral, api: TestClient) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        made = api.post(
            f"{API}/vms",
            json={"name": "a-fail", "image": "reference", "forwards": [f"{port}:22"]},
        )
        assert made.status_code == 201, made.text
        task = act(api, "a-fail", "start")
    assert task["status"] == "error"
    assert task["error"].startswith("QEMU exited with status")
    # QEMU's last words and its command line stay with the task, for the CLI to show.
    *said, command = task["detail"].splitlines()
    assert said and any("hostfwd" in line or str(port) in line for line in said), said
    assert command.startswith("command: ") and f"{port}-:22" in command
    last = entries(api, "a-fail")[-1]
    assert (last["action"], last["outcome"]) == ("vm.start", "LaunchError")
    assert last["detail"]["task"] == task["id"]
    assert last["detail"]["error"] == task["error"]
    assert api.get(f"{API}/vms/a-fail").json()["state"] == "defined"


def test_refusals_of_callers_are_audited(ctx: Corral, api: TestClient) -> None:
    made = api.post(f"{API}/vms", json={"name": "a-view", "image": "reference", "project": "p1"})
    assert made.status_code == 201
    secret = create_token(ctx, local_principal(ctx, os.geteuid()), "vic").secret
    before = api.get(f"{API}/tasks").json()["total"]
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {secret}"}) as vic:
        forbidden = vic.post(f"{API}/vms/a-view/start")
        assert forbidden.status_code == 403 and forbidden.json()["error"] == "Forbidden"
        gone = vic.delete(f"{API}/vms/a-view")
        assert gone.status_code == 403
        missing = vic.post(f"{API}/vms/a-nowhere/stop", json={"timeout": 5})
        assert missing.status_code == 404
    assert api.get(f"{API}/tasks").json()["total"] == before  # no task for any of them
    log = [(e["actor"], e["action"], e["outcome"]) for e in entries(api, "a-view")]
    assert log[-2:] == [("vic", "vm.start", "Forbidden"), ("vic", "vm.delete", "Forbidden")]
    nowhere = entries(api, "a-nowhere")
    assert [(e["action"], e["outcome"], e["project"]) for e in nowhere] == [
        ("vm.stop", "NotFound", None)
    ]
    assert nowhere[0]["detail"]["timeout"] == 5
    assert api.get(f"{API}/vms/a-view").json()["state"] == "defined"


def test_a_task_shows_the_phases_of_its_operation(ctx: Corral, api: TestClient) -> None:
    made = api.post(f"{API}/vms", json={"name": "a-phase", "image": "reference"})
    assert made.status_code == 201
    answer = api.post(f"{API}/vms/a-phase/start", json={"wait": True, "timeout": 120})
    assert answer.status_code == 202
    task_id = answer.json()["id"]
    seen: list[str] = []
    end = time.monotonic() + 120
    while True:
        task = api.get(f"{API}/tasks/{task_id}").json()
        if not seen or seen[-1] != task["detail"]:
            seen.append(task["detail"])
        if task["status"] in FINAL:
            break
        assert time.monotonic() < end, seen
        time.sleep(0.02)
    assert task["status"] == "success", task
    assert task["detail"].startswith("started, ready in ")
    assert "waiting for the guest to be ready" in seen, seen
    act(api, "a-phase", "destroy")
