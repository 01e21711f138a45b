"""``GET /vms/{name}/ssh`` and ``GET /launch/{task_id}`` refuse without a guest: another
project's VM or launch answers exactly as one that does not exist, a VM that is not running
is 409 naming its state. (What they answer for a launched guest: tests/api/test_create_launch.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from corral.access.local import local_principal
from corral.access.projects import create_project, get_project
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.api.auth import via
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.store.models import TaskRow, utcnow

API = "/api/v1"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    """Projects p1 (alice, operator) and p2, a defined VM in each, and a task of p2."""
    corral = Corral(Home(tmp_path_factory.mktemp("ssh")))
    ensure_reference(corral)
    admin = local_principal(corral, os.geteuid())
    for project in ("p1", "p2"):
        create_project(corral, admin, project)
    create_user(corral, admin, "alice", "operator", ["p1"])
    for name, project, port in (("mine", "p1", 2298), ("theirs", "p2", 2299)):
        request = CreateRequest(
            name=name, image="reference", memory="128M", forwards=(f"{port}:22",), project=project
        )
        create(corral, request)
    yield corral
    corral.close()


@pytest.fixture(scope="module")
def admin(ctx: Corral) -> Iterator[TestClient]:
    with TestClient(via(create_app(ctx), "unix")) as client:
        yield client


@pytest.fixture(scope="module")
def alice(ctx: Corral) -> Iterator[TestClient]:
    secret = create_token(ctx, local_principal(ctx, os.geteuid()), "alice").secret
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {secret}"}) as client:
        yield client


def test_another_projects_vm_answers_as_absent(alice: TestClient, admin: TestClient) -> None:
    theirs = alice.get(f"{API}/vms/theirs/ssh")
    ghost = alice.get(f"{API}/vms/ghost/ssh")
    assert theirs.status_code == ghost.status_code == 404
    assert theirs.json() == {
        "error": "NotFound",
        "message": "vm 'theirs' not found",
        "field": None,
    }
    assert ghost.json()["message"] == "vm 'ghost' not found"
    # It does exist: its project's members (and the administrator) are told its state.
    assert admin.get(f"{API}/vms/theirs/ssh").status_code == 409


def test_a_vm_that_is_not_running_is_409_naming_its_state(alice: TestClient) -> None:
    answer = alice.get(f"{API}/vms/mine/ssh")
    assert answer.status_code == 409
    body = answer.json()
    assert body["error"] == "StateError" and "defined" in body["message"]


def _task(ctx: Corral, name: str, project: str) -> str:
    """Record a task of ``project`` (as a daemon would), without running anything."""
    task_id = str(uuid.uuid4())
    project_id = get_project(ctx, local_principal(ctx, os.geteuid()), project).id
    with ctx.db.session() as session:
        session.add(
            TaskRow(
                id=task_id,
                name=name,
                target_kind="vm",
                target_name="theirs",
                project_id=project_id,
                status="running",
                progress=0,
                detail="running",
                initiated_by="admin",
                requested_at=utcnow(),
                daemon_id="test",
            )
        )
    return task_id


def test_a_launch_of_another_project_answers_as_absent(ctx: Corral, alice: TestClient) -> None:
    task_id = _task(ctx, "vm.launch", "p2")
    ghost = str(uuid.uuid4())
    theirs = alice.get(f"{API}/launch/{task_id}", params={"after": 0, "wait": 20})
    absent = alice.get(f"{API}/launch/{ghost}", params={"after": 0, "wait": 20})
    assert theirs.status_code == absent.status_code == 404
    assert theirs.json()["message"] == f"task '{task_id}' not found"
    assert absent.json()["message"] == f"task '{ghost}' not found"
    too_long = alice.get(f"{API}/launch/{ghost}", params={"after": 0, "wait": 31})
    assert too_long.status_code == 422 and too_long.json()["field"] == "wait"


def test_a_task_the_daemon_holds_no_launch_of_is_404(ctx: Corral, admin: TestClient) -> None:
    """Another operation's task, or a launch of a daemon that has since restarted."""
    for name in ("vm.start", "vm.launch"):
        task_id = _task(ctx, name, "p1")
        assert admin.get(f"{API}/tasks/{task_id}").status_code == 200
        answer = admin.get(f"{API}/launch/{task_id}")
        assert answer.status_code == 404
        assert answer.json()["message"] == f"launch '{task_id}' not found"
