"""Tasks over the API, with real QEMU: VM actions answer 202 with a task that ends as the VM
does; refusals known up front are 409/404 at once; one VM's operations are serialised; a
task left by a crashed daemon ends as error; each user sees only their projects' tasks.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from corral.access.local import local_principal
from corral.access.projects import create_project
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.api.auth import via
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.tasks import INTERRUPTED, Report, Target, TaskPool, recover
from corral.store.models import TaskRow, VmRow, utcnow
from tests.api.support import API, admin_client, state_dir, wait_task


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    with state_dir("tk-") as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


def vm(ctx: Corral, name: str) -> str:
    create(ctx, CreateRequest(name=name, image="reference", memory="128M"))
    return name


def act(client: TestClient, name: str, action: str, **body: Any) -> dict[str, Any]:
    """Run ``action`` on VM ``name`` and wait for its task to succeed."""
    answer = client.post(f"{API}/vms/{name}/{action}", json=body or None)
    assert answer.status_code == 202, answer.text
    task: dict[str, Any] = answer.json()
    assert answer.headers["location"] == f"{API}/tasks/{task['id']}"
    assert task["name"] == f"vm.{action}" and task["target_name"] == name
    assert task["status"] in {"queued", "running"}
    done = wait_task(client, task["id"])
    assert done["status"] == "success", done
    return done


def state(client: TestClient, name: str) -> str:
    value: str = client.get(f"{API}/vms/{name}").json()["state"]
    return value


def test_life_cycle_through_tasks(ctx: Corral, api: TestClient) -> None:
    name = vm(ctx, "t-life")
    started = act(api, name, "start", wait=True)
    assert started["progress"] == 100 and started["error"] is None
    assert started["initiated_by"].startswith("local:")
    assert started["started_at"] and started["completed_at"]
    assert started["detail"].startswith("started, ready in ")
    assert state(api, name) == "running"
    act(api, name, "pause")
    assert state(api, name) == "paused"
    act(api, name, "resume")
    assert state(api, name) == "running"
    act(api, name, "stop")
    assert state(api, name) == "shutoff"
    recent = api.get(f"{API}/tasks", params={"target_name": name}).json()
    assert [t["name"] for t in recent["items"]] == [
        "vm.stop",
        "vm.resume",
        "vm.pause",
        "vm.start",
    ]
    assert recent["total"] == 4
    assert (
        api.get(f"{API}/tasks", params={"status": "error", "target_name": name}).json()["items"]
        == []
    )


def test_refusals_known_up_front_answer_at_once(ctx: Corral, api: TestClient) -> None:
    name = vm(ctx, "t-refuse")
    before = api.get(f"{API}/tasks").json()["total"]
    paused = api.post(f"{API}/vms/{name}/pause")
    assert paused.status_code == 409
    assert paused.json()["error"] == "StateError"
    assert "it is defined" in paused.json()["message"]
    missing = api.post(f"{API}/vms/no-such-vm/start")
    assert missing.status_code == 404 and missing.json()["message"] == "vm 'no-such-vm' not found"
    unknown = api.post(f"{API}/vms/{name}/start", json={"wait": True, "bogus": 1})
    assert unknown.status_code == 422 and unknown.json()["field"] == "bogus"
    assert api.get(f"{API}/tasks").json()["total"] == before  # no task for any of them
    assert api.get(f"{API}/tasks/{uuid.uuid4()}").status_code == 404


def test_concurrent_starts_are_serialised(ctx: Corral, api: TestClient) -> None:
    name = vm(ctx, "t-race")
    barrier = threading.Barrier(2)
    answers: list[Any] = [None, None]

    def start(i: int) -> None:
        barrier.wait()
        answers[i] = api.post(f"{API}/vms/{name}/start")

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    outcomes = []
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"] == "StateError"
            outcomes.append("refused")
            continue
        assert answer.status_code == 202, answer.text
        task = wait_task(api, answer.json()["id"])
        if task["status"] == "error":
            assert task["error"].startswith(f"cannot start vm '{name}': it is running")
        outcomes.append(task["status"])
    assert sorted(outcomes) in (["refused", "success"], ["error", "success"])
    assert state(api, name) == "running"
    act(api, name, "destroy")
    assert state(api, name) == "shutoff"


def test_delete_is_a_task_and_refused_while_running(ctx: Corral, api: TestClient) -> None:
    name = vm(ctx, "t-delete")
    act(api, name, "start")
    refused = api.delete(f"{API}/vms/{name}")
    assert refused.status_code == 409 and "it is running" in refused.json()["message"]
    act(api, name, "destroy")
    answer = api.delete(f"{API}/vms/{name}")
    assert answer.status_code == 202
    assert wait_task(api, answer.json()["id"])["status"] == "success"
    assert api.get(f"{API}/vms/{name}").status_code == 404
    assert not ctx.home.vm_dir(name).exists()


def test_cancelling(ctx: Corral, api: TestClient) -> None:
    pool = _pool(api)
    admin = local_principal(ctx, os.geteuid())
    entered = threading.Event()

    def spin(report: Report) -> str:
        entered.set()
        for step in range(2000):
            report(step // 20, "spinning")
            report.check_cancelled()
            time.sleep(0.01)
        return "never cancelled"

    task = pool.submit(admin, "test.spin", Target("test", "spin"), None, spin, cancellable=True)
    assert entered.wait(30)
    answer = api.post(f"{API}/tasks/{task.id}/cancel")
    assert answer.status_code == 200, answer.text
    done = wait_task(api, task.id)
    assert done["status"] == "cancelled" and not done["cancellable"]
    again = api.post(f"{API}/tasks/{task.id}/cancel")
    assert again.status_code == 409 and "it is cancelled" in again.json()["message"]

    fixed = pool.submit(admin, "test.fixed", Target("test", "fixed"), None, lambda _: "ok")
    assert wait_task(api, fixed.id)["detail"] == "ok"
    finished = api.post(f"{API}/tasks/{fixed.id}/cancel")
    assert finished.status_code == 409 and "it has ended" in finished.json()["message"]


def _pool(client: TestClient) -> TaskPool:
    app: Any = client.app
    while not hasattr(app, "state"):  # via() wraps the app in a closure
        app = app.__closure__[0].cell_contents
    pool: TaskPool = app.state.tasks
    return pool


def test_interrupted_task_ends_as_error_and_vm_is_reconciled(ctx: Corral) -> None:
    name = vm(ctx, "t-crash")
    # What a daemon killed half-way through a start leaves: the VM ``starting`` without a
    # QEMU, and its task ``running`` under that daemon's id.
    with ctx.db.session() as session:
        session.execute(update(VmRow).where(VmRow.name == name).values(state="starting"))
        task_id = str(uuid.uuid4())
        session.add(
            TaskRow(
                id=task_id,
                name="vm.start",
                target_kind="vm",
                target_name=name,
                project_id=None,
                status="running",
                progress=10,
                detail="launching QEMU",
                initiated_by="local:0",
                requested_at=utcnow(),
                started_at=utcnow(),
                cancellable=False,
                cancel_requested=False,
                daemon_id="a-daemon-that-died",
            )
        )
    # A new daemon starts: its lifespan recovers.
    with TestClient(via(create_app(ctx), "unix")) as client:
        task = client.get(f"{API}/tasks/{task_id}").json()
        assert task["status"] == "error" and task["error"] == INTERRUPTED
        assert task["completed_at"] is not None
        vm_now = client.get(f"{API}/vms/{name}").json()
        assert vm_now["state"] == "shutoff"
        assert vm_now["reason"] == "start was interrupted before QEMU came up"
        act(client, name, "start")  # and it works again
        act(client, name, "destroy")
    assert recover(ctx, "yet-another-daemon") == []  # nothing left unfinished


def test_tasks_are_scoped_to_projects(ctx: Corral, api: TestClient) -> None:
    admin = local_principal(ctx, os.geteuid())
    create_project(ctx, admin, "other")
    create_user(ctx, admin, "olga", "operator", ["other"])
    token = create_token(ctx, admin, "olga").secret
    mine = vm(ctx, "t-scope")
    task = act(api, mine, "start")
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {token}"}) as olga:
        assert olga.get(f"{API}/tasks").json() == {
            "items": [],
            "total": 0,
            "limit": 100,
            "offset": 0,
        }
        hidden = olga.get(f"{API}/tasks/{task['id']}")
        assert hidden.status_code == 404 and hidden.json()["message"].startswith("task ")
        assert olga.post(f"{API}/tasks/{task['id']}/cancel").status_code == 404
        assert olga.post(f"{API}/vms/{mine}/destroy").status_code == 404
    assert api.get(f"{API}/tasks", params={"target_name": mine}).json()["total"] == 1
    act(api, mine, "destroy")
