"""What the API tests share: a state directory with the reference image, projects and users;
clients for the local administrator and for a user's token; waiting for a task."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.access.local import local_principal
from corral.access.projects import create_project
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.api.auth import via
from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.define import delete
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.errors import CorralError
from corral.store.models import VmRow

API = "/api/v1"
#: The statuses a task ends in.
FINAL = {"success", "error", "cancelled"}


@contextlib.contextmanager
def state_dir(
    prefix: str,
    projects: Sequence[str] = (),
    users: Mapping[str, tuple[str, Sequence[str]]] | None = None,
) -> Iterator[Corral]:
    """A state directory under ``/tmp`` (short: QEMU's UNIX sockets live in it) with the
    reference image, ``projects``, and ``users`` (name: (role, projects)); every VM is
    destroyed and deleted at the end, and the directory removed."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    ctx = Corral(Home(home))
    try:
        ensure_reference(ctx)
        admin = local_principal(ctx, os.geteuid())
        for project in projects:
            create_project(ctx, admin, project)
        for user, (role, member_of) in (users or {}).items():
            create_user(ctx, admin, user, role, list(member_of))
        yield ctx
    finally:
        with ctx.db.session() as session:
            names = list(session.scalars(select(VmRow.name)))
        for name in names:
            with contextlib.suppress(CorralError):  # not running
                lifecycle.destroy(ctx, name)
            with contextlib.suppress(CorralError):
                delete(ctx, name)
        ctx.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module", name="ctx")
def two_projects(request: pytest.FixtureRequest) -> Iterator[Corral]:
    """Fixture ``ctx``: a state directory for the test module (named after its
    ``STATE_PREFIX``) with projects ``p1`` and ``p2``, and operators ``alice`` of ``p1`` and
    ``bob`` of ``p2``. A module uses it by importing it."""
    users = {"alice": ("operator", ["p1"]), "bob": ("operator", ["p2"])}
    prefix = getattr(request.module, "STATE_PREFIX", "api-")
    with state_dir(prefix, ["p1", "p2"], users) as corral:
        yield corral


@pytest.fixture(scope="module", name="api")
def two_projects_admin(ctx: Corral) -> Iterator[TestClient]:
    """Fixture ``api``: the local administrator's client on :func:`two_projects`."""
    with admin_client(ctx) as client:
        yield client


def define(client: TestClient, name: str, project: str, **extra: Any) -> None:
    """Define VM ``name`` of the reference image in ``project`` (with ``extra`` fields)."""
    body = {"name": name, "image": "reference", "memory": "128M", "project": project, **extra}
    answer = client.post(f"{API}/vms", json=body)
    assert answer.status_code == 201, answer.text


@contextlib.contextmanager
def admin_client(ctx: Corral) -> Iterator[TestClient]:
    """The local administrator on the UNIX socket, with the app's lifespan (its task pool)."""
    with TestClient(via(create_app(ctx), "unix")) as client:
        yield client


def user_client(ctx: Corral, user: str) -> TestClient:
    """``user`` with a new token, as over TCP (enter it to run the app's lifespan)."""
    secret = create_token(ctx, local_principal(ctx, os.geteuid()), user).secret
    return TestClient(create_app(ctx), headers={"Authorization": f"Bearer {secret}"})


def wait_task(client: TestClient, task_id: str, deadline: float = 90.0) -> dict[str, Any]:
    """Poll the task until its status is final, checking its progress never goes back."""
    end = time.monotonic() + deadline
    last = 0
    while True:
        task: dict[str, Any] = client.get(f"{API}/tasks/{task_id}").json()
        assert task["progress"] >= last, task
        last = task["progress"]
        if task["status"] in FINAL:
            return task
        assert time.monotonic() < end, f"task still {task['status']}: {task}"
        time.sleep(0.05)


def act(client: TestClient, name: str, action: str, **body: Any) -> dict[str, Any]:
    """Ask for ``action`` on VM ``name`` and wait for its task to end (as it may)."""
    answer = client.post(f"{API}/vms/{name}/{action}", json=body or None)
    assert answer.status_code == 202, answer.text
    return wait_task(client, answer.json()["id"])


def audit_entries(client: TestClient, name: str) -> list[dict[str, Any]]:
    """The audit entries on VM ``name``, oldest first."""
    query = {"target_kind": "vm", "target": name, "limit": 100}
    page = client.get(f"{API}/audit", params=query).json()
    return list(reversed(page["items"]))
