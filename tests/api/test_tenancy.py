"""Tenancy over the API: tokens over TCP, each user sees only their projects' objects.

Another project's object answers 404 with the same body as a name that does not exist, and
listings leave it out; a request without a valid token answers 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from corral.access.local import local_principal
from corral.access.projects import create_project, get_project
from corral.access.tokens import create_token, revoke_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.store.models import VmRow

ENDPOINTS = ["/api/v1/vms/{}", "/api/v1/images/{}", "/api/v1/keypairs/{}"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Corral, dict[str, str]]]:
    """Projects p1 and p2, a VM in each, alice (operator, p1), bob (viewer, p2)."""
    import os

    ctx = Corral(Home(tmp_path_factory.mktemp("tenancy")))
    ensure_reference(ctx)
    admin = local_principal(ctx, os.geteuid())
    tokens: dict[str, str] = {}
    for project, user, role in (("p1", "alice", "operator"), ("p2", "bob", "viewer")):
        create_project(ctx, admin, project)
        create_user(ctx, admin, user, role, [project])
        tokens[user] = create_token(ctx, admin, user).secret
        vm = f"{project}-vm"
        create(ctx, CreateRequest(name=vm, image="reference", memory="128M"))
        with ctx.db.session() as session:
            pid = get_project(ctx, admin, project).id
            session.execute(update(VmRow).where(VmRow.name == vm).values(project_id=pid))
    yield ctx, tokens
    ctx.close()


def client(world: tuple[Corral, dict[str, str]], user: str | None) -> TestClient:
    ctx, tokens = world
    headers = {"Authorization": f"Bearer {tokens[user]}"} if user else {}
    return TestClient(create_app(ctx), headers=headers)


def test_no_token_is_401(world: tuple[Corral, dict[str, str]]) -> None:
    with client(world, None) as anon:
        answer = anon.get("/api/v1/vms")
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"] == "Unauthenticated"
        bogus = anon.get("/api/v1/vms", headers={"Authorization": "Bearer crl_0000_nope"})
        assert bogus.status_code == 401
        assert bogus.json()["message"] == answer.json()["message"]  # says nothing more
        assert anon.get("/api/v1/openapi.json").status_code == 200  # the contract is public


def test_each_user_sees_only_their_project(world: tuple[Corral, dict[str, str]]) -> None:
    with client(world, "alice") as alice, client(world, "bob") as bob:
        assert [v["name"] for v in alice.get("/api/v1/vms").json()["items"]] == ["p1-vm"]
        assert [v["name"] for v in bob.get("/api/v1/vms").json()["items"]] == ["p2-vm"]
        assert alice.get("/api/v1/vms/p1-vm").status_code == 200
        hidden = alice.get("/api/v1/vms/p2-vm")
        missing = alice.get("/api/v1/vms/no-such-vm")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["message"] == "vm 'p2-vm' not found"
        # The reference image is in the default project: the public catalogue, which both
        # read, but neither learns who else uses it.
        assert [i["name"] for i in alice.get("/api/v1/images").json()["items"]] == ["reference"]
        reference = bob.get("/api/v1/images/reference")
        assert reference.status_code == 200
        assert reference.json()["used_by"] == ["p2-vm"]
        refused = alice.patch("/api/v1/images/reference", json={"os_hint": "debian"})
        assert refused.status_code == 403, refused.text
        # The host summary and instance types are for every authenticated user.
        assert bob.get("/api/v1/host").status_code == 200
        assert bob.get("/api/v1/instance-types/t1.micro").status_code == 200


def test_sweep_other_projects_ids(world: tuple[Corral, dict[str, str]]) -> None:
    """Every by-name endpoint, with every name of the other project: 404 and no data."""
    with client(world, "alice") as alice:
        for template in ENDPOINTS:
            for name in ("p2-vm",):
                answer = alice.get(template.format(name))
                assert answer.status_code == 404, (template, name)
                assert set(answer.json()) == {"error", "message", "field"}


def test_revoked_token_stops_working(world: tuple[Corral, dict[str, str]]) -> None:
    import os

    ctx, _ = world
    admin = local_principal(ctx, os.geteuid())
    extra = create_token(ctx, admin, "alice", name="short")
    with TestClient(create_app(ctx), headers={"Authorization": f"Bearer {extra.secret}"}) as c:
        assert c.get("/api/v1/vms").status_code == 200
        revoke_token(ctx, admin, extra.secret)
        assert c.get("/api/v1/vms").status_code == 401
    assert Path(ctx.home.db_path).read_bytes().find(extra.secret.encode()) == -1
