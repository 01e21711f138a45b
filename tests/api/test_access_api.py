"""The access API through the real authentication: projects, members, quotas, users, tokens,
the audit log, login and whoami, each asked by an admin, a member and a stranger.

Every request carries a bearer token (the app is served as over TCP). Another project's
object, or another user, answers 404 exactly as one that does not exist; an object the caller
sees but may not change answers 403; a refused value is a 422 naming its field; no token is
a 401. Passwords are never in an answer, a token's secret only in the one that made it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from corral.access.local import local_principal
from corral.access.projects import create_project, get_project
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.compute.context import Corral
from corral.config import Home
from corral.spec.vm import DiskSpec, VmSpec
from corral.store.models import VmRow

API = "/api/v1"
PASSWORD = "correct horse battery staple"


@dataclass
class World:
    """Projects p1 and p2; the admin root, alice (operator of p1), vic (viewer of p1) and bob
    (operator of p2), each with a token; alice also has a password."""

    ctx: Corral
    tokens: dict[str, str]
    answers: list[Response]

    def client(self, user: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return TestClient(create_app(self.ctx), headers=headers)

    def seen(self, answer: Response) -> Response:
        """``answer``, kept to check afterwards that no answer held a password."""
        self.answers.append(answer)
        return answer


@pytest.fixture
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="aa-", dir="/tmp"))
    ctx = Corral(Home(root))
    admin = local_principal(ctx, os.geteuid())
    create_project(ctx, admin, "p1")
    create_project(ctx, admin, "p2")
    members = {"root": ("admin", []), "alice": ("operator", ["p1"])}
    members |= {"vic": ("viewer", ["p1"]), "bob": ("operator", ["p2"])}
    tokens = {}
    for name, (role, projects) in members.items():
        password = PASSWORD if name == "alice" else None
        create_user(ctx, admin, name, role, projects, password)
        tokens[name] = create_token(ctx, admin, name).secret
    w = World(ctx, tokens, [])
    yield w
    ctx.close()
    shutil.rmtree(root, ignore_errors=True)
    for answer in w.answers:
        assert PASSWORD not in answer.text
        assert "argon2" not in answer.text


def body(answer: Response, status: int) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def refused(answer: Response, status: int, error: str, field: str | None = None) -> str:
    """The message of an error answer, after checking its status, class and field."""
    found = body(answer, status)
    assert set(found) == {"error", "message", "field"}
    assert (found["error"], found["field"]) == (error, field), found
    return str(found["message"])


def add_vm(ctx: Corral, name: str, project: str) -> None:
    """A defined VM row in ``project`` (no disks made: what a project's delete looks at)."""
    admin = local_principal(ctx, os.geteuid())
    spec = VmSpec(name=name, disks=(DiskSpec(name="root", size=2**30),))
    with ctx.db.session() as session:
        session.add(
            VmRow(
                id=str(spec.uuid),
                name=name,
                spec=spec.model_dump_json(),
                state="defined",
                reason="defined",
                project_id=get_project(ctx, admin, project).id,
            )
        )


# --- projects ---------------------------------------------------------------------------


def test_projects_create_read_update_delete(world: World) -> None:
    with world.client("root") as root:
        made = root.post(f"{API}/projects", json={"name": "p3", "description": "third"})
        assert body(made, 201)["name"] == "p3"
        assert made.headers["location"] == f"{API}/projects/p3"
        taken = root.post(f"{API}/projects", json={"name": "p3"})
        assert refused(taken, 409, "AlreadyExists") == "project 'p3' already exists"
        bad = root.post(f"{API}/projects", json={"name": "Bad_Name"})
        assert refused(bad, 422, "InvalidInput", "name").startswith("name: 'Bad_Name' is not")
        extra = root.post(f"{API}/projects", json={"name": "p4", "owner": "me"})
        refused(extra, 422, "InvalidInput", "owner")
        odd = root.patch(f"{API}/projects/p3", json={"description": "two\nlines"})
        refused(odd, 422, "InvalidInput", "description")
        changed = root.patch(f"{API}/projects/p3", json={"description": "the third"})
        assert body(changed, 200)["description"] == "the third"
        assert body(root.get(f"{API}/projects/p3"), 200)["description"] == "the third"
        listed = body(root.get(f"{API}/projects", params={"limit": 2, "offset": 1}), 200)
        assert [p["name"] for p in listed["items"]] == ["p1", "p2"]
        assert (listed["total"], listed["limit"], listed["offset"]) == (4, 2, 1)
        only = body(root.get(f"{API}/projects", params={"member": "bob"}), 200)
        assert [p["name"] for p in only["items"]] == ["p2"]
        assert root.delete(f"{API}/projects/p3").status_code == 204
        assert refused(root.get(f"{API}/projects/p3"), 404, "NotFound") == "project 'p3' not found"
        default = root.delete(f"{API}/projects/default")
        assert "cannot be deleted" in refused(default, 422, "InvalidInput", "name")
        add_vm(world.ctx, "web", "p2")
        busy = root.delete(f"{API}/projects/p2")
        assert refused(busy, 409, "InUse") == "project 'p2' is in use by vm web"
        assert body(root.get(f"{API}/projects/p2"), 200)["vms"] == 1


def test_a_member_reads_its_projects_and_changes_none(world: World) -> None:
    with world.client("alice") as alice:
        listed = body(alice.get(f"{API}/projects"), 200)
        assert [p["name"] for p in listed["items"]] == ["p1"]
        assert body(alice.get(f"{API}/projects/p1"), 200)["members"] == ["alice", "vic"]
        hidden = alice.get(f"{API}/projects/p2")
        ghost = alice.get(f"{API}/projects/ghost")
        assert refused(hidden, 404, "NotFound") == "project 'p2' not found"
        refused(ghost, 404, "NotFound")
        for method, path, payload in [
            ("PATCH", "/projects/{}", {"description": "mine"}),
            ("DELETE", "/projects/{}", None),
            ("PUT", "/projects/{}/members/bob", None),
            ("DELETE", "/projects/{}/members/vic", None),
            ("PUT", "/projects/{}/quota", {"vcpus": 100}),
            ("PATCH", "/projects/{}/quota", {"vcpus": 100}),
        ]:
            mine = alice.request(method, API + path.format("p1"), json=payload)
            assert refused(mine, 403, "Forbidden").startswith("alice (operator) may not manage")
            other = alice.request(method, API + path.format("p2"), json=payload)
            assert refused(other, 404, "NotFound") == "project 'p2' not found", (method, path)
        made = alice.post(f"{API}/projects", json={"name": "mine"})
        assert refused(made, 403, "Forbidden") == "alice (operator) may not manage projects"
    with world.client("root") as root:
        assert body(root.get(f"{API}/projects/p1"), 200)["description"] == ""
        assert body(root.get(f"{API}/projects/p1/quota"), 200)["limits"]["vcpus"] is None


def test_members_are_added_and_removed(world: World) -> None:
    with world.client("root") as root:
        added = body(root.put(f"{API}/projects/p2/members/alice"), 200)
        assert added == {
            "project": "p2",
            "user": "alice",
            "role": "operator",
            "member": True,
            "changed": True,
        }
        assert body(root.put(f"{API}/projects/p2/members/alice"), 200)["changed"] is False
        nobody = root.put(f"{API}/projects/p2/members/nobody")
        assert refused(nobody, 404, "NotFound") == "user 'nobody' not found"
        with world.client("alice") as alice:
            names = [p["name"] for p in body(alice.get(f"{API}/projects"), 200)["items"]]
            assert names == ["p1", "p2"]
            removed = body(root.delete(f"{API}/projects/p2/members/alice"), 200)
            assert (removed["member"], removed["changed"]) == (False, True)
            assert alice.get(f"{API}/projects/p2").status_code == 404
        again = body(root.delete(f"{API}/projects/p2/members/alice"), 200)
        assert again["changed"] is False


# --- quotas -----------------------------------------------------------------------------


def test_quotas_are_read_by_members_and_set_by_admins(world: World) -> None:
    add_vm(world.ctx, "web", "p1")
    with world.client("root") as root:
        partial = body(root.patch(f"{API}/projects/p1/quota", json={"vcpus": 4}), 200)
        assert partial["limits"] == {"instances": None, "vcpus": 4, "memory": None, "disk": None}
        assert partial["usage"] == {
            "instances": 1,
            "vcpus": 1,
            "memory": 512 << 20,
            "disk": 1 << 30,
        }
        more = body(root.patch(f"{API}/projects/p1/quota", json={"memory": 1 << 30}), 200)
        assert (more["limits"]["vcpus"], more["limits"]["memory"]) == (4, 1 << 30)
        lifted = body(root.patch(f"{API}/projects/p1/quota", json={"vcpus": None}), 200)
        assert (lifted["limits"]["vcpus"], lifted["limits"]["memory"]) == (None, 1 << 30)
        replaced = body(root.put(f"{API}/projects/p1/quota", json={"instances": 2}), 200)
        assert replaced["limits"] == {"instances": 2, "vcpus": None, "memory": None, "disk": None}
        for bad, field in [
            ({"vcpus": -1}, "vcpus"),
            ({"vcpus": "many"}, "vcpus"),
            ({"instances": 2**40}, "instances"),
            ({"gpus": 1}, "gpus"),
        ]:
            refused(root.patch(f"{API}/projects/p1/quota", json=bad), 422, "InvalidInput", field)
        missing = root.put(f"{API}/projects/nope/quota", json={})
        assert refused(missing, 404, "NotFound") == "project 'nope' not found"
    with world.client("vic") as vic:
        shown = body(vic.get(f"{API}/projects/p1/quota"), 200)
        assert (shown["project"], shown["limits"]["instances"]) == ("p1", 2)
        refused(vic.get(f"{API}/projects/p2/quota"), 404, "NotFound")


# --- users ------------------------------------------------------------------------------


def test_users_are_managed_by_admins(world: World) -> None:
    with world.client("root") as root:
        made = world.seen(
            root.post(
                f"{API}/users",
                json={"name": "carol", "role": "viewer", "projects": ["p2"], "password": PASSWORD},
            )
        )
        carol = body(made, 201)
        assert made.headers["location"] == f"{API}/users/carol"
        assert (carol["role"], carol["projects"], carol["has_password"]) == ("viewer", ["p2"], True)
        assert "password" not in carol
        for payload, field in [
            ({"name": "Carol", "role": "viewer"}, "name"),
            ({"name": "dave", "role": "root"}, "role"),
            ({"name": "dave", "role": "viewer", "password": "short"}, "password"),
            ({"name": "dave", "role": "viewer", "admin": True}, "admin"),
            ({"role": "viewer"}, "name"),
        ]:
            message = refused(root.post(f"{API}/users", json=payload), 422, "InvalidInput", field)
            assert "short" not in message
        nope = root.post(f"{API}/users", json={"name": "dave", "role": "viewer", "projects": ["x"]})
        assert refused(nope, 404, "NotFound") == "project 'x' not found"
        taken = root.post(f"{API}/users", json={"name": "carol", "role": "viewer"})
        refused(taken, 409, "AlreadyExists")
        viewers = body(root.get(f"{API}/users", params={"role": "viewer"}), 200)
        assert [u["name"] for u in viewers["items"]] == ["carol", "vic"]
        in_p1 = body(root.get(f"{API}/users", params={"project": "p1"}), 200)
        assert [u["name"] for u in in_p1["items"]] == ["alice", "vic"]
        changed = world.seen(
            root.patch(f"{API}/users/carol", json={"role": "operator", "disabled": True})
        )
        assert (body(changed, 200)["role"], changed.json()["disabled"]) == ("operator", True)
        off = body(root.get(f"{API}/users", params={"disabled": True}), 200)
        assert [u["name"] for u in off["items"]] == ["carol"]
        removed = body(root.patch(f"{API}/users/carol", json={"password": None}), 200)
        assert removed["has_password"] is False
        assert root.delete(f"{API}/users/carol").status_code == 204
        refused(root.get(f"{API}/users/carol"), 404, "NotFound")
        refused(root.delete(f"{API}/users/carol"), 404, "NotFound")


def test_a_user_reads_itself_and_changes_only_its_password(world: World) -> None:
    with world.client("alice") as alice:
        listed = body(alice.get(f"{API}/users"), 200)
        assert [u["name"] for u in listed["items"]] == ["alice"]
        assert body(alice.get(f"{API}/users/alice"), 200)["projects"] == ["p1"]
        hidden = alice.get(f"{API}/users/bob")
        assert refused(hidden, 404, "NotFound") == "user 'bob' not found"
        for method, payload in [("PATCH", {"role": "admin"}), ("PATCH", {"disabled": True})]:
            refused(alice.request(method, f"{API}/users/alice", json=payload), 403, "Forbidden")
            other = alice.request(method, f"{API}/users/bob", json=payload)
            assert refused(other, 404, "NotFound") == "user 'bob' not found"
        refused(alice.delete(f"{API}/users/alice"), 403, "Forbidden")
        refused(alice.delete(f"{API}/users/bob"), 404, "NotFound")
        refused(alice.post(f"{API}/users", json={"name": "eve", "role": "admin"}), 403, "Forbidden")
        short = alice.patch(f"{API}/users/alice", json={"password": "short"})
        assert refused(short, 422, "InvalidInput", "password").endswith("at least 8 characters")
        new = "another long password"
        done = world.seen(alice.patch(f"{API}/users/alice", json={"password": new}))
        assert body(done, 200)["role"] == "operator"
        assert new not in done.text
    with world.client(None) as anonymous:
        logged = anonymous.post(f"{API}/login", json={"user": "alice", "password": new})
        assert body(logged, 201)["user"] == "alice"


def test_a_disabled_users_tokens_are_refused(world: World) -> None:
    with world.client("bob") as bob:
        assert bob.get(f"{API}/whoami").status_code == 200
        with world.client("root") as root:
            body(root.patch(f"{API}/users/bob", json={"disabled": True}), 200)
        refused(bob.get(f"{API}/whoami"), 401, "Unauthenticated")


# --- tokens -----------------------------------------------------------------------------


def test_tokens_are_shown_once_and_are_each_users_own(world: World) -> None:
    with world.client("alice") as alice:
        made = alice.post(f"{API}/tokens", json={"name": "laptop", "expires": "12h"})
        new = body(made, 201)
        secret = new["token"]
        assert (new["user"], new["name"], new["state"]) == ("alice", "laptop", "active")
        assert secret.startswith(new["prefix"]) and new["expires_at"] is not None
        assert made.headers["location"] == f"{API}/tokens/{new['id']}"
        shown = alice.get(f"{API}/tokens/{new['id']}")
        listed = alice.get(f"{API}/tokens")
        assert [t["user"] for t in body(listed, 200)["items"]] == ["alice", "alice"]
        for answer in (shown, listed):
            assert secret not in answer.text and "token" not in body(answer, 200)
        bad = alice.post(f"{API}/tokens", json={"expires": "soon"})
        assert refused(bad, 422, "InvalidInput", "expires").startswith("expires: 'soon' is not")
        long = alice.post(f"{API}/tokens", json={"expires": "9999d"})
        refused(long, 422, "InvalidInput", "expires")
        for other in (alice.post(f"{API}/tokens", json={"user": "bob"}),
                      alice.get(f"{API}/tokens", params={"user": "bob"})):  # fmt: skip
            assert refused(other, 404, "NotFound") == "user 'bob' not found"
        bobs = world.tokens["bob"].split("_")[1]
        assert refused(alice.get(f"{API}/tokens/{bobs}"), 404, "NotFound").startswith("token")
        refused(alice.delete(f"{API}/tokens/{bobs}"), 404, "NotFound")
        refused(alice.delete(f"{API}/tokens/not-an-id"), 404, "NotFound")
        with TestClient(create_app(world.ctx), headers={"Authorization": f"Bearer {secret}"}) as c:
            assert body(c.get(f"{API}/whoami"), 200)["name"] == "alice"
            revoked = body(alice.delete(f"{API}/tokens/{new['id'][:6]}"), 200)
            assert (revoked["id"], revoked["state"]) == (new["id"], "revoked")
            refused(c.get(f"{API}/whoami"), 401, "Unauthenticated")
        active = body(alice.get(f"{API}/tokens", params={"state": "active"}), 200)
        assert [t["name"] for t in active["items"]] == ["default"]
    with world.client("root") as root:
        everyone = {t["user"] for t in body(root.get(f"{API}/tokens"), 200)["items"]}
        assert everyone == {"root", "alice", "vic", "bob"}
        made = body(root.post(f"{API}/tokens", json={"user": "vic", "name": "ci"}), 201)
        assert (made["user"], made["expires_at"]) == ("vic", None)
        bad_name = root.post(f"{API}/tokens", json={"user": "vic", "name": "a b"})
        refused(bad_name, 422, "InvalidInput", "name")


# --- the audit log ----------------------------------------------------------------------


def test_the_audit_log_records_changes_and_is_an_admins(world: World) -> None:
    with world.client("alice") as alice:
        refused(alice.patch(f"{API}/projects/p1", json={"description": "x"}), 403, "Forbidden")
        assert refused(alice.get(f"{API}/audit"), 403, "Forbidden").endswith("the audit log")
    with world.client("root") as root:
        body(root.post(f"{API}/projects", json={"name": "p3"}), 201)
        body(root.patch(f"{API}/projects/p3/quota", json={"vcpus": 8}), 200)
        body(root.patch(f"{API}/users/vic", json={"role": "operator"}), 200)
        newest = body(root.get(f"{API}/audit", params={"limit": 3}), 200)
        seen = [(e["actor"], e["action"], e["target_name"], e["outcome"]) for e in newest["items"]]
        assert seen == [
            ("root", "user.set_role", "vic", "ok"),
            ("root", "quota.set", "p3", "ok"),
            ("root", "project.create", "p3", "ok"),
        ]
        assert newest["total"] > 3
        refusal = body(root.get(f"{API}/audit", params={"actor": "alice"}), 200)
        [entry] = refusal["items"]
        assert (entry["action"], entry["outcome"]) == ("project.update", "Forbidden")
        assert entry["detail"]["error"] == "alice (operator) may not manage project 'p1'"
        kinds = body(root.get(f"{API}/audit", params={"action": "user.", "limit": 1000}), 200)
        assert {e["action"] for e in kinds["items"]} == {"user.create", "user.set_role"}
        by_target = root.get(f"{API}/audit", params={"target": "p3", "project": "p3"})
        assert body(by_target, 200)["total"] == 2
        later = root.get(f"{API}/audit", params={"since": "2999-01-01T00:00:00Z"})
        assert body(later, 200)["total"] == 0
        for params, field in [({"limit": 0}, "limit"), ({"since": "yesterday"}, "since")]:
            refused(root.get(f"{API}/audit", params=params), 422, "InvalidInput", field)


# --- login and whoami -------------------------------------------------------------------


def test_login_answers_a_token_and_refuses_all_alike(world: World) -> None:
    with world.client(None) as anonymous:
        wrong = anonymous.post(f"{API}/login", json={"user": "alice", "password": "wrong one"})
        unknown = anonymous.post(f"{API}/login", json={"user": "zed", "password": PASSWORD})
        tokens_only = anonymous.post(f"{API}/login", json={"user": "bob", "password": PASSWORD})
        messages = {refused(a, 401, "Unauthenticated") for a in (wrong, unknown, tokens_only)}
        assert messages == {"authentication failed: the credentials are not valid"}
        assert wrong.headers["www-authenticate"] == "Bearer"
        refused(
            anonymous.post(f"{API}/login", json={"user": "alice"}), 422, "InvalidInput", "password"
        )
        made = world.seen(
            anonymous.post(f"{API}/login", json={"user": "alice", "password": PASSWORD})
        )
        new = body(made, 201)
        assert (new["user"], new["name"], new["state"]) == ("alice", "corral-login", "active")
        assert new["expires_at"] is not None
        signed = {"Authorization": f"Bearer {new['token']}"}
        who = body(anonymous.get(f"{API}/whoami", headers=signed), 200)
        assert who == {"name": "alice", "role": "operator", "local": False, "projects": ["p1"]}
    with world.client("root") as root:
        assert body(root.get(f"{API}/whoami"), 200)["projects"] == ["default", "p1", "p2"]
        failed = body(root.get(f"{API}/audit", params={"action": "user.login"}), 200)["items"]
        assert [(e["actor"], e["outcome"]) for e in failed] == [
            ("bob", "Unauthenticated"),
            ("zed", "Unauthenticated"),
            ("alice", "Unauthenticated"),
        ]
        assert PASSWORD not in str(failed) and "wrong one" not in str(failed)


def test_every_access_endpoint_needs_a_token_over_tcp(world: World) -> None:
    operations = [
        ("GET", "/projects"),
        ("POST", "/projects"),
        ("GET", "/projects/p1"),
        ("PATCH", "/projects/p1"),
        ("DELETE", "/projects/p1"),
        ("PUT", "/projects/p1/members/alice"),
        ("DELETE", "/projects/p1/members/alice"),
        ("GET", "/projects/p1/quota"),
        ("PUT", "/projects/p1/quota"),
        ("PATCH", "/projects/p1/quota"),
        ("GET", "/users"),
        ("POST", "/users"),
        ("GET", "/users/alice"),
        ("PATCH", "/users/alice"),
        ("DELETE", "/users/alice"),
        ("GET", "/tokens"),
        ("POST", "/tokens"),
        ("GET", "/tokens/0123456789abcdef"),
        ("DELETE", "/tokens/0123456789abcdef"),
        ("GET", "/audit"),
        ("GET", "/whoami"),
    ]
    with world.client(None) as anonymous:
        for method, path in operations:
            answer = anonymous.request(method, API + path, json={})
            refused(answer, 401, "Unauthenticated")
            assert answer.headers["www-authenticate"] == "Bearer", (method, path)
    with world.client("root") as root:
        assert body(root.get(f"{API}/projects/p1"), 200)["members"] == ["alice", "vic"]


def test_the_token_id_rules_agree_with_the_tokens_table() -> None:
    from corral.access.checks import TOKEN_ID_DIGITS, token_id_of
    from corral.store.models import TOKEN_ID_LENGTH

    assert TOKEN_ID_DIGITS == TOKEN_ID_LENGTH
    whole = "crl_0123456789abcdef_" + "x" * 43
    assert token_id_of(whole) == "0123456789abcdef"
    assert token_id_of("crl_01234567") == "01234567"
    assert token_id_of("012") is None
