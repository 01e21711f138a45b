"""``corral project``, ``user``, ``token``, ``audit``, ``login``, ``logout`` and ``whoami``
through the real command, in fresh, throw-away state directories (no bootstrap step: their
owner is the local admin). Each command is a client of the state directory's daemon, which the
first one starts; ``corral login`` talks to a daemon listening on TCP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.access import projects, tokens, users
from corral.access.principal import Principal
from corral.compute.context import Corral
from corral.config import Home
from corral.spec.vm import DiskSpec, VmSpec
from corral.store.models import VmRow
from tests import daemons
from tests.integration.conftest import CORRAL

TOKEN = re.compile(r"crl_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


class Homes:
    """A corral state directory and a user home directory, both temporary."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.user = root / "user"
        self.user.mkdir()

    @property
    def config(self) -> Path:
        """Where ``corral login`` keeps its login (``$XDG_CONFIG_HOME``)."""
        return self.user / "config"

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            CORRAL_HOME=str(self.state),
            CORRAL_CACHE=str(self.state / "cache"),
            HOME=str(self.user),
            XDG_CONFIG_HOME=str(self.config),
            COLUMNS="200",
        )
        for name in ("CORRAL_DATABASE_URL", "CORRAL_URL", "CORRAL_TOKEN"):
            env.pop(name, None)
        try:
            return subprocess.run(
                [CORRAL, *args],
                env=env,
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            daemons.note(self.state)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"corral {' '.join(args)}: {result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def refused(self, *args: str, status: int = 1, stdin: str | None = None) -> str:
        """The one line of error output; the exit status is checked."""
        result = self.run(*args, stdin=stdin)
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        return lines[0].removeprefix("error: ")

    def corral(self) -> Corral:
        """The same state directory, in this process."""
        return Corral(Home(self.state))


@pytest.fixture
def homes() -> Iterator[Homes]:
    """Short paths: the daemon's UNIX socket lives in the state directory."""
    root = Path(tempfile.mkdtemp(prefix="ac-", dir="/tmp"))
    yield Homes(root)
    daemons.stop(root / "state")
    shutil.rmtree(root, ignore_errors=True)


def test_acceptance_project_then_user_with_a_token_shown_once(homes: Homes) -> None:
    assert homes.ok("project", "create", "p1").strip() == "project p1 created"
    out = homes.ok("user", "create", "alice", "--role", "operator", "--project", "p1", "--token")
    assert "user alice created (operator; projects: p1; password: none)" in out
    found = TOKEN.findall(out)
    assert len(found) == 1
    secret = found[0]
    assert f"token: {secret}\n" in out
    assert "shown once" in out
    assert "keeps no copy" in out
    # Never again: not in listings, not in the audit log, not in the database.
    listed = homes.ok("token", "list", "--json") + homes.ok("token", "list")
    listed += homes.ok("audit", "list", "--json") + homes.ok("user", "list", "--json")
    assert secret not in listed
    assert secret.encode() not in (homes.state / "corral.db").read_bytes()
    [token] = homes.json("token", "list")
    assert token["user"] == "alice"
    assert token["state"] == "active"
    assert secret.startswith(token["prefix"])
    # The token stands for alice, an operator of p1.
    ctx = homes.corral()
    try:
        principal = tokens.authenticate_token(ctx, secret)
        p1 = projects.list_projects(ctx, principal)
    finally:
        ctx.close()
    assert principal.name == "alice"
    assert principal.role.value == "operator"
    assert [p.name for p in p1] == ["p1"]
    [alice] = homes.json("user", "list")
    assert (alice["name"], alice["role"], alice["projects"]) == ("alice", "operator", ["p1"])


def test_projects_list_and_quota(homes: Homes) -> None:
    homes.ok("project", "create", "p1", "--description", "the first")
    listed = homes.json("project", "list")
    assert [(p["name"], p["description"]) for p in listed] == [
        ("default", "Objects created without a project"),
        ("p1", "the first"),
    ]
    quota = homes.json("project", "quota", "p1", "--instances", "3", "--memory", "8G")
    assert quota == {
        "project": "p1",
        "limits": {"instances": 3, "vcpus": None, "memory": 8 * 2**30, "disk": None},
        "usage": {"instances": 0, "vcpus": 0, "memory": 0, "disk": 0},
    }
    homes.ok("project", "quota", "p1", "--disk", "100G", "--instances", "unlimited")
    shown = homes.ok("project", "quota", "p1")
    assert re.search(r"disk\s+100 GiB\s+0 B", shown)
    assert re.search(r"instances\s+unlimited\s+0", shown)
    assert re.search(r"memory\s+8 GiB", shown)
    cleared = homes.json("project", "quota", "p1", "--clear")
    assert set(cleared["limits"].values()) == {None}


def test_a_project_that_owns_a_vm_is_not_deleted(homes: Homes) -> None:
    homes.ok("project", "create", "p1")
    ctx = homes.corral()
    try:
        spec = VmSpec(name="web", disks=(DiskSpec(name="root", size=2**30),))
        p1 = projects.get_project(ctx, _local(ctx), "p1").id
        with ctx.db.session() as session:
            session.add(
                VmRow(
                    id=str(spec.uuid),
                    name="web",
                    spec=spec.model_dump_json(),
                    state="defined",
                    reason="defined",
                    project_id=p1,
                )
            )
    finally:
        ctx.close()
    assert homes.refused("project", "delete", "p1") == "project 'p1' is in use by vm web"
    assert homes.json("project", "quota", "p1")["usage"]["instances"] == 1


def _local(ctx: Corral) -> Principal:
    from corral.access.local import local_principal

    return local_principal(ctx, os.getuid())


def test_errors_are_one_line_naming_the_field(homes: Homes) -> None:
    homes.ok("project", "create", "p1")
    cases = [
        (("project", "create", "Bad_Name"), "name: 'Bad_Name' is not allowed"),
        (("project", "create", "p1"), "project 'p1' already exists"),
        (("project", "delete", "default"), "name: the project default cannot be deleted"),
        (("project", "quota", "p1", "--vcpus", "many"), "vcpus: 'many' is not a whole number"),
        (("project", "quota", "p1", "--disk", "lots"), "disk: 'lots' is not a size"),
        (("project", "quota", "p1", "--clear", "--vcpus", "2"), "clear: lifts every limit"),
        (("user", "create", "bob", "--role", "root"), "role: 'root' is not a role"),
        (("user", "create", "Bob", "--role", "viewer"), "name: 'Bob' is not allowed"),
        (("user", "create", "bob", "--role", "viewer", "--expires", "1d"), "expires: "),
        (
            ("user", "create", "bob", "--role", "viewer", "--token", "--expires", "soon"),
            "expires: 'soon' is not a duration",
        ),
        (("token", "revoke", "zz"), "id: not a token id"),
        (("audit", "list", "--limit", "0"), "limit: must be between 1 and 1000"),
    ]
    for args, message in cases:
        assert homes.refused(*args).startswith(message), args
    # Nothing of bob was made by the refused creates.
    assert homes.json("user", "list") == []
    not_found = [
        (("user", "create", "bob", "--role", "viewer", "--project", "nope"), "project 'nope'"),
        (("project", "delete", "nope"), "project 'nope' not found"),
        (("user", "delete", "nobody"), "user 'nobody' not found"),
        (("token", "create", "nobody"), "user 'nobody' not found"),
        (("token", "revoke", "0123456789abcdef"), "token '0123456789abcdef' not found"),
    ]
    for args, message in not_found:
        assert homes.refused(*args, status=2).startswith(message), args


def test_passwords_tokens_and_users_life_cycle(homes: Homes) -> None:
    homes.ok("project", "create", "p1")
    out = homes.ok(
        "user",
        "create",
        "carol",
        "--role",
        "viewer",
        "--project",
        "p1",
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert "password: set" in out
    assert "crl_" not in out
    assert (
        homes.refused(
            "user", "create", "dave", "--role", "viewer", "--password-stdin", stdin="short\n"
        )
        == "password: must be at least 8 characters"
    )
    assert homes.refused(
        "user", "create", "dave", "--role", "viewer", "--password-stdin"
    ).startswith("password-stdin: standard input holds no password")
    ctx = homes.corral()
    try:
        assert users.authenticate_password(ctx, "carol", "a long enough password").name == "carol"
    finally:
        ctx.close()

    made = homes.json("token", "create", "carol", "--name", "ci", "--expires", "30d")
    assert TOKEN.fullmatch(made["token"])
    assert made["expires_at"] is not None
    out = homes.ok("token", "create", "carol")
    assert len(TOKEN.findall(out)) == 1
    assert [t["name"] for t in homes.json("token", "list", "--user", "carol")] == [
        "default",
        "ci",
    ]
    revoked = homes.ok("token", "revoke", made["id"])
    assert revoked.strip() == f"token {made['id']} of user carol revoked"
    states = {t["name"]: t["state"] for t in homes.json("token", "list")}
    assert states == {"ci": "revoked", "default": "active"}

    assert homes.ok("user", "disable", "carol").strip() == "user carol is now disabled"
    assert homes.ok("user", "disable", "carol").strip() == "user carol was already disabled"
    [carol] = homes.json("user", "list")
    assert carol["disabled"] is True
    homes.ok("user", "enable", "carol")
    homes.ok("user", "set-role", "carol", "operator")
    homes.ok("project", "add-member", "default", "carol")
    [carol] = homes.json("user", "list")
    assert (carol["role"], carol["projects"]) == ("operator", ["default", "p1"])
    homes.ok("user", "delete", "carol")
    assert homes.json("user", "list") == []
    assert homes.json("token", "list") == []


def test_admin_commands_are_audited(homes: Homes) -> None:
    homes.ok("project", "create", "p1")
    homes.ok("user", "create", "alice", "--role", "operator", "--project", "p1", "--token")
    homes.refused("project", "create", "p1")
    homes.ok("project", "quota", "p1", "--vcpus", "8")
    entries = homes.json("audit", "list")
    actor = f"local:{os.getuid()}"
    seen = [(e["actor"], e["action"], e["target_name"], e["outcome"]) for e in entries]
    assert seen == [
        (actor, "quota.set", "p1", "ok"),
        (actor, "project.create", "p1", "AlreadyExists"),
        (actor, "token.create", "alice", "ok"),
        (actor, "user.create", "alice", "ok"),
        (actor, "project.create", "p1", "ok"),
    ]
    assert len(homes.json("audit", "list", "--limit", "2")) == 2
    table = homes.ok("audit", "list", "--action", "user.")
    assert "user.create" in table
    assert "project.create" not in table


# --- corral login, whoami, logout -------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_login_over_tcp_then_verbs_act_as_that_user(homes: Homes) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    homes.ok("serve", "--bind", f"127.0.0.1:{port}", "--detach")
    homes.ok("project", "create", "p1")
    homes.ok("project", "create", "p2")
    password = "a long enough password\n"
    homes.ok("user", "create", "vic", "--role", "viewer", "--project", "p1", "--password-stdin",
             stdin=password)  # fmt: skip
    saved = homes.config / "corral" / "login.json"

    # No terminal and no --password-stdin: refused at once, nothing saved.
    assert homes.refused("login", url, "--user", "vic").startswith(
        "password: no terminal to ask it on"
    )
    wrong = homes.refused("login", url, "--user", "vic", "--password-stdin", stdin="not it\n")
    assert wrong == "authentication failed: the credentials are not valid"
    assert not saved.exists()

    out = homes.ok("login", f"127.0.0.1:{port}/", "--user", "vic", "--password-stdin",
                   stdin=password)  # fmt: skip
    assert f"logged in to {url} as vic (viewer; projects: p1)" in out
    assert saved.stat().st_mode & 0o777 == 0o600
    login = json.loads(saved.read_text())
    assert (login["url"], login["user"]) == (url, "vic")
    assert TOKEN.fullmatch(login["token"])
    assert login["token"] not in out

    # Every verb now goes to that daemon over TCP, as vic.
    who = homes.json("whoami")
    assert who == {"name": "vic", "role": "viewer", "local": False, "projects": ["p1"],
                   "daemon": url}  # fmt: skip
    assert [p["name"] for p in homes.json("project", "list")] == ["p1"]
    assert [u["name"] for u in homes.json("user", "list")] == ["vic"]
    [token] = homes.json("token", "list")
    assert (token["name"], token["state"]) == ("corral-login", "active")
    assert homes.refused("project", "quota", "p2", status=2) == "project 'p2' not found"
    assert homes.refused("project", "delete", "p1") == "vic (viewer) may not manage project 'p1'"
    assert homes.refused("audit", "list").endswith("may not manage the audit log")

    out = homes.ok("logout")
    assert out.strip() == f"logged out of {url}; its token is revoked"
    assert not saved.exists()
    assert homes.ok("logout").strip() == "not logged in"
    local = homes.json("whoami")
    assert (local["name"], local["local"]) == (f"local:{os.getuid()}", True)
    [token] = homes.json("token", "list", "--user", "vic")
    assert token["state"] == "revoked"
    failed = homes.json("audit", "list", "--action", "user.login")
    assert [(e["actor"], e["outcome"]) for e in failed] == [("vic", "Unauthenticated")]


def test_login_with_a_token_keeps_it_on_logout(homes: Homes) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    homes.ok("serve", "--bind", f"127.0.0.1:{port}", "--detach")
    homes.ok("project", "create", "p1")
    homes.ok("user", "create", "ops", "--role", "operator", "--project", "p1")
    made = homes.json("token", "create", "ops", "--name", "ci")
    assert homes.refused("login", url, "--user", "root", "--token", made["token"]) == (
        "user: the token is ops's, not root's"
    )
    out = homes.ok("login", url, "--token", "-", stdin=made["token"] + "\n")
    assert f"logged in to {url} as ops (operator; projects: p1)" in out
    refused = homes.refused("project", "create", "p9")
    assert refused == "ops (operator) may not manage projects"
    out = homes.ok("logout")
    assert "its token was not made by corral login and stays valid" in out
    [token] = homes.json("token", "list", "--user", "ops")
    assert token["state"] == "active"
    bad = homes.refused("login", "ftp://example.org", "--token", made["token"])
    assert bad.startswith("url: 'ftp://example.org' is not http://HOST:PORT")
