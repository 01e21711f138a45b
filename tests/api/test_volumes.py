"""Volumes over the API: create, list, show, rename and delete; what is refused and why.

The world: projects p1 and p2; alice operates p1, carol views p1, bob operates p2; the
local administrator on the UNIX socket. Volumes are real files made by qemu-img in the
state directory's pool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import checks
from sqlalchemy import select, update

from corral.access.audit import AuditFilter, list_entries
from corral.access.local import local_principal
from corral.access.principal import Principal
from corral.access.projects import create_project
from corral.access.quotas import get_quota, set_quota
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.api.auth import via
from corral.compute import volumes as volumes_module
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create, delete
from corral.config import Home
from corral.errors import HostError, InUse, QuotaExceeded
from corral.storage.volumes import pool_dir, volume_path
from corral.store.models import VmRow, VolumeRow
from corral.units import GiB, MiB
from tests.api.support import wait_task
from tests.store.conftest import PostgresServer, postgres_server  # noqa: F401 (a fixture)

API = "/api/v1"


@dataclass
class World:
    ctx: Corral
    admin: Principal
    #: Clients by user; ``local`` is the local administrator on the UNIX socket.
    clients: dict[str, TestClient]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    home = Path(tempfile.mkdtemp(prefix="vol-", dir="/tmp"))
    ctx = Corral(Home(home))
    admin = local_principal(ctx, os.geteuid())
    for project in ("p1", "p2"):
        create_project(ctx, admin, project)
    users = {"alice": ("operator", "p1"), "carol": ("viewer", "p1"), "bob": ("operator", "p2")}
    clients = {"local": TestClient(via(create_app(ctx), "unix"))}
    for user, (role, project) in users.items():
        create_user(ctx, admin, user, role, [project])
        secret = create_token(ctx, admin, user).secret
        headers = {"Authorization": f"Bearer {secret}"}
        clients[user] = TestClient(create_app(ctx), headers=headers)
    yield World(ctx, admin, clients)
    ctx.close()
    shutil.rmtree(home, ignore_errors=True)


def _row(ctx: Corral, name: str, project_id: str | None = None) -> VolumeRow:
    with ctx.db.session() as session:
        query = select(VolumeRow).where(VolumeRow.name == name)
        if project_id is not None:
            query = query.where(VolumeRow.project_id == project_id)
        return session.scalars(query).one()


def _file(ctx: Corral, name: str) -> Path:
    row = _row(ctx, name)
    return volume_path(ctx.home.root, row.id, "raw" if row.format == "raw" else "qcow2")


def _pool(ctx: Corral) -> set[str]:
    """The files in the volume pool."""
    pool = pool_dir(ctx.home.root)
    return set(os.listdir(pool)) if pool.exists() else set()


def _qemu_img(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        ["qemu-img", *args, "--output=json"], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _error(answer: Any, status: int, kind: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["error"] == kind, body
    return body


def test_create_makes_a_qcow2_that_qemu_img_checks_clean(world: World) -> None:
    alice = world.clients["alice"]
    answer = alice.post(
        f"{API}/volumes",
        json={"name": "data", "size": "1G", "project": "p1", "description": "scratch"},
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["name"] == "data" and body["project"] == "p1" and body["kind"] == "volume"
    assert body["format"] == "qcow2" and body["size"] == GiB
    assert body["attached_to"] is None and body["description"] == "scratch"
    assert answer.headers["location"] == f"{API}/volumes/data?project=p1"
    path = _file(world.ctx, "data")
    assert path.parent == pool_dir(world.ctx.home.root)
    assert path.stat().st_mode & 0o777 == 0o600
    info = _qemu_img("info", "-f", "qcow2", str(path))
    assert info["format"] == "qcow2" and info["virtual-size"] == GiB
    check = _qemu_img("check", "-f", "qcow2", str(path))
    assert check.get("corruptions", 0) == 0 and check.get("leaks", 0) == 0
    assert body["used"] == path.stat().st_blocks * 512 < 1 * MiB  # metadata only
    assert alice.get(f"{API}/volumes/data").json() == body


def test_create_raw_is_a_sparse_file(world: World) -> None:
    answer = world.clients["alice"].post(
        f"{API}/volumes", json={"name": "rawdisk", "size": 64 * MiB, "format": "raw"}
    )
    # The default project is not alice's.
    _error(answer, 404, "NotFound")
    answer = world.clients["alice"].post(
        f"{API}/volumes",
        json={"name": "rawdisk", "size": 64 * MiB, "format": "raw", "project": "p1"},
    )
    assert answer.status_code == 201, answer.text
    path = _file(world.ctx, "rawdisk")
    assert path.suffix == ".raw" and path.stat().st_size == 64 * MiB
    assert path.stat().st_blocks * 512 < 1 * MiB
    assert _qemu_img("info", "-f", "raw", str(path))["virtual-size"] == 64 * MiB


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad_Name", "size": "1G"}, "name"),
        ({"name": "-x", "size": "1G"}, "name"),
        ({"name": "ok", "size": "ten gigs"}, "size"),
        ({"name": "ok", "size": "1Q"}, "size"),
        ({"name": "ok", "size": 1000}, "size"),
        ({"name": "ok", "size": 1 * MiB + 1}, "size"),
        ({"name": "ok", "size": "17T"}, "size"),
        ({"name": "ok", "size": True}, "size"),
        ({"name": "ok", "size": -4096}, "size"),
        ({"name": "ok", "size": None}, "size"),
        ({"name": "ok"}, "size"),
        ({"name": "ok", "size": "1G", "format": "vmdk"}, "format"),
        ({"name": "ok", "size": "1G", "description": "two\nlines"}, "description"),
        ({"name": "ok", "size": "1G", "colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_422_naming_the_field(world: World, body: dict[str, Any], field: str) -> None:
    answer = world.clients["alice"].post(f"{API}/volumes", json={"project": "p1", **body})
    assert _error(answer, 422, "InvalidInput")["field"] == field
    with world.ctx.db.session() as session:
        assert session.scalars(select(VolumeRow).where(VolumeRow.name == "ok")).first() is None


def test_viewer_may_read_but_not_create_change_or_delete(world: World) -> None:
    alice, carol = world.clients["alice"], world.clients["carol"]
    shown = alice.post(f"{API}/volumes", json={"name": "shown", "size": "16M", "project": "p1"})
    assert shown.status_code == 201
    before = len(_pool(world.ctx))
    refused = carol.post(f"{API}/volumes", json={"name": "mine", "size": "16M", "project": "p1"})
    assert "carol (viewer) may not create" in _error(refused, 403, "Forbidden")["message"]
    assert len(_pool(world.ctx)) == before
    assert carol.get(f"{API}/volumes/shown").status_code == 200
    _error(carol.patch(f"{API}/volumes/shown", json={"description": "x"}), 403, "Forbidden")
    _error(carol.delete(f"{API}/volumes/shown"), 403, "Forbidden")
    assert _file(world.ctx, "shown").exists()


def test_another_projects_volume_is_404_and_left_out(world: World) -> None:
    bob, alice = world.clients["bob"], world.clients["alice"]
    made = bob.post(
        f"{API}/volumes", json={"name": "secret", "size": "16M", "project": "p2"}
    ).json()
    for answer in (
        alice.get(f"{API}/volumes/secret"),
        alice.get(f"{API}/volumes/secret?project=p2"),
        alice.patch(f"{API}/volumes/secret", json={"description": "mine now"}),
        alice.delete(f"{API}/volumes/secret"),
    ):
        body = _error(answer, 404, "NotFound")
        assert "16777216" not in answer.text and made["created_at"] not in answer.text
        assert body["message"] in ("volume 'secret' not found", "project 'p2' not found")
    ghost = alice.get(f"{API}/volumes/no-such-volume")
    assert _error(ghost, 404, "NotFound")["message"] == "volume 'no-such-volume' not found"
    listed = alice.get(f"{API}/volumes").json()
    assert "secret" not in [v["name"] for v in listed["items"]]
    _error(alice.get(f"{API}/volumes?project=p2"), 404, "NotFound")
    # alice cannot create in p2 either, and learns nothing from trying.
    _error(
        alice.post(f"{API}/volumes", json={"name": "x", "size": "16M", "project": "p2"}),
        404,
        "NotFound",
    )
    assert bob.get(f"{API}/volumes/secret").json()["description"] == ""


def test_names_are_unique_per_project(world: World) -> None:
    local, alice = world.clients["local"], world.clients["alice"]
    first = local.post(f"{API}/volumes", json={"name": "logs", "size": "16M", "project": "p1"})
    assert first.status_code == 201
    again = alice.post(f"{API}/volumes", json={"name": "logs", "size": "16M", "project": "p1"})
    assert _error(again, 409, "AlreadyExists")["message"] == "volume 'logs' already exists"
    other = local.post(f"{API}/volumes", json={"name": "logs", "size": "32M", "project": "p2"})
    assert other.status_code == 201
    # The administrator sees both: the name alone is not enough.
    ambiguous = local.get(f"{API}/volumes/logs")
    body = _error(ambiguous, 422, "InvalidInput")
    assert body["field"] == "project" and "p1, p2" in body["message"]
    assert local.get(f"{API}/volumes/logs?project=p2").json()["size"] == 32 * MiB
    # alice sees only p1's, without naming it.
    assert alice.get(f"{API}/volumes/logs").json()["size"] == 16 * MiB


def test_rename_and_describe(world: World) -> None:
    alice = world.clients["alice"]
    alice.post(f"{API}/volumes", json={"name": "old", "size": "16M", "project": "p1"})
    path = _file(world.ctx, "old")
    answer = alice.patch(f"{API}/volumes/old", json={"name": "new", "description": "renamed"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "new" and answer.json()["description"] == "renamed"
    assert _file(world.ctx, "new") == path and path.exists()  # the file keeps its name
    _error(alice.get(f"{API}/volumes/old"), 404, "NotFound")
    alice.post(f"{API}/volumes", json={"name": "taken", "size": "16M", "project": "p1"})
    clash = alice.patch(f"{API}/volumes/new", json={"name": "taken"})
    assert _error(clash, 409, "AlreadyExists")["message"] == "volume 'taken' already exists"
    bad = alice.patch(f"{API}/volumes/new", json={"name": "NO"})
    assert _error(bad, 422, "InvalidInput")["field"] == "name"
    unknown = alice.patch(f"{API}/volumes/new", json={"size": "1G"})
    assert _error(unknown, 422, "InvalidInput")["field"] == "size"
    assert alice.get(f"{API}/volumes/new").json()["description"] == "renamed"


def test_delete_removes_row_and_file(world: World) -> None:
    alice = world.clients["alice"]
    alice.post(f"{API}/volumes", json={"name": "gone", "size": "16M", "project": "p1"})
    path = _file(world.ctx, "gone")
    answer = alice.delete(f"{API}/volumes/gone")
    assert answer.status_code == 204 and answer.content == b""
    assert not path.exists()
    _error(alice.get(f"{API}/volumes/gone"), 404, "NotFound")
    _error(alice.delete(f"{API}/volumes/gone"), 404, "NotFound")


def test_a_project_owning_a_volume_is_not_deleted(world: World) -> None:
    local = world.clients["local"]
    assert local.post(f"{API}/projects", json={"name": "p3"}).status_code == 201
    made = local.post(f"{API}/volumes", json={"name": "keep", "size": "1M", "project": "p3"})
    assert made.status_code == 201, made.text
    refused = local.delete(f"{API}/projects/p3")
    assert refused.status_code == 409, refused.text
    assert "volume keep" in refused.json()["message"]
    assert local.get(f"{API}/projects/p3").json()["volumes"] == 1
    assert local.delete(f"{API}/volumes/keep", params={"project": "p3"}).status_code == 204
    assert local.delete(f"{API}/projects/p3").status_code in (200, 204)


def test_delete_attached_is_409_naming_the_vm(world: World) -> None:
    ctx, alice = world.ctx, world.clients["alice"]
    create(ctx, CreateRequest(name="holder", disk_size="16M", memory="128M", project="p1"))
    alice.post(f"{API}/volumes", json={"name": "busy", "size": "16M", "project": "p1"})
    with ctx.db.session() as session:
        vm_id = session.scalars(select(VmRow.id).where(VmRow.name == "holder")).one()
        session.execute(update(VolumeRow).where(VolumeRow.name == "busy").values(attached_to=vm_id))
    assert alice.get(f"{API}/volumes/busy").json()["attached_to"] == "holder"
    refused = alice.delete(f"{API}/volumes/busy")
    assert _error(refused, 409, "InUse")["message"] == "volume 'busy' is in use by vm holder"
    assert _file(ctx, "busy").exists()
    attached = alice.get(f"{API}/volumes?attached=true&kind=volume").json()
    assert [v["name"] for v in attached["items"]] == ["busy"]
    detached = alice.get(f"{API}/volumes?attached=false").json()["items"]
    assert "busy" not in [v["name"] for v in detached]
    assert all(v["kind"] == "volume" and v["attached_to"] is None for v in detached)


def test_listing_shows_vm_disks_read_only(world: World) -> None:
    ctx, alice = world.ctx, world.clients["alice"]
    create(ctx, CreateRequest(name="lister", disk_size="32M", memory="128M", project="p1"))
    disks = alice.get(f"{API}/volumes?kind=vm-disk&name=lister").json()
    assert disks["total"] == 1
    (disk,) = disks["items"]
    assert disk["name"] == "lister/root" and disk["kind"] == "vm-disk"
    assert disk["attached_to"] == "lister" and disk["size"] == 32 * MiB
    assert disk["project"] == "p1" and disk["format"] == "qcow2"
    # Read-only: not found by name, and another project's VM disks are left out.
    assert alice.get(f"{API}/volumes/lister%2Froot").status_code == 404
    everything = alice.get(f"{API}/volumes?limit=1000").json()
    kinds = {v["kind"] for v in everything["items"]}
    assert kinds == {"volume", "vm-disk"}
    assert all(v["project"] == "p1" for v in everything["items"])
    names = [v["name"] for v in everything["items"]]
    assert names == sorted(names) and everything["total"] == len(names)
    page = alice.get(f"{API}/volumes?limit=2&offset=1").json()
    assert [v["name"] for v in page["items"]] == names[1:3]
    assert page["total"] == everything["total"]
    assert alice.get(f"{API}/volumes?kind=disk").json()["field"] == "kind"


def test_quota_counts_volumes_and_refuses_403_naming_it(world: World) -> None:
    ctx, alice = world.ctx, world.clients["alice"]
    usage = get_quota(ctx, world.admin, "p1").usage["disk"]
    alice.post(f"{API}/volumes", json={"name": "counted", "size": "64M", "project": "p1"})
    assert get_quota(ctx, world.admin, "p1").usage["disk"] == usage + 64 * MiB
    set_quota(ctx, world.admin, "p1", {"disk": usage + 64 * MiB + 32 * MiB})
    try:
        files = _pool(ctx)
        over = alice.post(f"{API}/volumes", json={"name": "over", "size": "64M", "project": "p1"})
        body = _error(over, 403, "QuotaExceeded")
        assert "quota disk of project 'p1' exceeded" in body["message"]
        assert _pool(ctx) == files
        fits = alice.post(f"{API}/volumes", json={"name": "fits", "size": "32M", "project": "p1"})
        assert fits.status_code == 201
        # A VM's disks and the volumes share the disk quota.
        vm = CreateRequest(name="too-big", disk_size="16M", memory="128M", project="p1")
        with pytest.raises(QuotaExceeded, match="quota disk of project 'p1'"):
            create(ctx, vm)
    finally:
        set_quota(ctx, world.admin, "p1", {"disk": None})


def test_too_large_for_the_datastore_is_409(world: World) -> None:
    answer = world.clients["alice"].post(
        f"{API}/volumes", json={"name": "huge", "size": "16T", "project": "p1"}
    )
    body = _error(answer, 409, "InsufficientCapacity")
    assert "not enough disk" in body["message"]


def test_quota_taken_meanwhile_leaves_no_file(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another create takes the last of the quota after this one's file was written: the
    check under the lock refuses it, and its file goes."""
    ctx, alice = world.ctx, world.clients["alice"]
    usage = get_quota(ctx, world.admin, "p1").usage["disk"]
    set_quota(ctx, world.admin, "p1", {"disk": usage + 48 * MiB})
    real_write = volumes_module._write_file

    def racing_write(*args: Any) -> Path:
        path = real_write(*args)
        monkeypatch.setattr(volumes_module, "_write_file", real_write)  # one race only
        volumes_module.create_volume(ctx, world.admin, "winner", "32M", project="p1")
        return path

    monkeypatch.setattr(volumes_module, "_write_file", racing_write)
    try:
        files = _pool(ctx)
        lost = alice.post(f"{API}/volumes", json={"name": "loser", "size": "32M", "project": "p1"})
        assert "quota disk" in _error(lost, 403, "QuotaExceeded")["message"]
        winner = _file(ctx, "winner").name
        assert _pool(ctx) == files | {winner}
        _error(alice.get(f"{API}/volumes/loser"), 404, "NotFound")
    finally:
        set_quota(ctx, world.admin, "p1", {"disk": None})


def test_failure_after_the_row_leaves_neither_row_nor_file(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, alice = world.ctx, world.clients["alice"]
    real_flush = volumes_module._flush_named

    def failing_flush(session: Any, name: str) -> None:
        real_flush(session, name)
        raise HostError("the state directory's file system went read-only")

    monkeypatch.setattr(volumes_module, "_flush_named", failing_flush)
    files = _pool(ctx)
    answer = alice.post(f"{API}/volumes", json={"name": "half", "size": "16M", "project": "p1"})
    _error(answer, 503, "HostError")
    assert _pool(ctx) == files
    with ctx.db.session() as session:
        assert session.scalars(select(VolumeRow).where(VolumeRow.name == "half")).first() is None
    entry = list_entries(ctx, world.admin, AuditFilter(action="volume.create", target_name="half"))
    assert [e.outcome for e in entry] == ["HostError"]


def test_audit_log_names_who_did_what(world: World) -> None:
    alice = world.clients["alice"]
    alice.post(f"{API}/volumes", json={"name": "audited", "size": "16M", "project": "p1"})
    alice.patch(f"{API}/volumes/audited", json={"name": "audited2"})
    alice.delete(f"{API}/volumes/audited2")
    world.clients["carol"].delete(f"{API}/volumes/shown")
    entries = list_entries(world.ctx, world.admin, AuditFilter(action="volume."))
    seen = [(e.actor, e.action, e.target_name, e.project, e.outcome) for e in entries]
    assert ("alice", "volume.create", "audited", "p1", "ok") in seen
    assert ("alice", "volume.update", "audited", "p1", "ok") in seen
    assert ("alice", "volume.delete", "audited2", "p1", "ok") in seen
    assert ("carol", "volume.delete", "shown", "p1", "Forbidden") in seen
    by_action = {e.action: e for e in entries if e.target_name == "audited"}
    assert by_action["volume.create"].detail == {"size": 16 * MiB, "format": "qcow2"}
    assert by_action["volume.update"].detail == {"name": "audited2"}


# -- generated requests: no input is a 500 -------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_schema(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Every volume operation (creates and deletes included: they are cheap), served to the
    local administrator of a state directory of its own, its database SQLite and then
    PostgreSQL (which refuses NUL characters in text)."""
    home = Path(tempfile.mkdtemp(prefix="volz-", dir="/tmp"))
    url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    ctx = Corral(Home(home), database_url=url)
    admin = local_principal(ctx, os.geteuid())
    create_project(ctx, admin, "p1")
    volumes_module.create_volume(ctx, admin, "data", "16M", project="p1")
    config = schemathesis.Config.from_dict(
        {
            "seed": 20240601,
            "generation": {
                "mode": "all",
                "max-examples": 30,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": False,
            },
        }
    )
    app = via(create_app(ctx), "unix")
    yield schemathesis.openapi.from_asgi(f"{API}/openapi.json", app, config=config)
    ctx.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis reads ``Item._nodeid``, which this pytest no longer has."""
    setattr(request.node, "_nodeid", request.node.nodeid)  # noqa: B010


fuzzed = schemathesis.pytest.from_fixture("fuzz_schema").include(path_regex="/volumes")


@fuzzed.parametrize()
@hypothesis.settings(
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_generated_requests_are_answered_as_documented(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.negative_data_rejection,
        ]
    )


def test_attach_detach_resize_a_stopped_vm(world: World) -> None:
    ctx, alice, bob = world.ctx, world.clients["alice"], world.clients["bob"]
    create(ctx, CreateRequest(name="hp-a", disk_size="16M", memory="128M", project="p1"))
    create(ctx, CreateRequest(name="hp-b", disk_size="16M", memory="128M", project="p1"))
    create(ctx, CreateRequest(name="hp-c", disk_size="16M", memory="128M", project="p2"))
    alice.post(f"{API}/volumes", json={"name": "hp", "size": "16M", "project": "p1"})
    _error(bob.post(f"{API}/volumes/hp/attach", json={"vm": "hp-c"}), 404, "NotFound")
    _error(alice.post(f"{API}/volumes/hp/attach", json={"vm": "hp-c"}), 404, "NotFound")
    local = world.clients["local"]
    body = _error(local.post(f"{API}/volumes/hp/attach", json={"vm": "hp-c"}), 422, "InvalidInput")
    assert body["field"] == "vm"
    attached = alice.post(f"{API}/volumes/hp/attach", json={"vm": "hp-a"})
    assert attached.status_code == 200 and attached.json()["attached_to"] == "hp-a"
    again = alice.post(f"{API}/volumes/hp/attach", json={"vm": "hp-b"})
    assert _error(again, 409, "InUse")["message"] == "volume 'hp' is in use by vm hp-a"
    with pytest.raises(InUse, match="vm 'hp-a' is in use by volume hp"):
        delete(ctx, "hp-a")

    shrink = alice.post(f"{API}/volumes/hp/resize", json={"size": "8M"})
    assert _error(shrink, 422, "InvalidInput")["field"] == "size"
    _error(bob.post(f"{API}/volumes/hp/resize", json={"size": "32M"}), 404, "NotFound")
    grown = alice.post(f"{API}/volumes/hp/resize", json={"size": "32M"})
    assert grown.status_code == 200 and grown.json()["size"] == 32 * MiB
    assert _qemu_img("info", "-f", "qcow2", str(_file(ctx, "hp")))["virtual-size"] == 32 * MiB

    bad = alice.post(f"{API}/volumes/hp/detach", json={"timeout": 0})
    assert _error(bad, 422, "InvalidInput")["field"] == "timeout"
    _error(bob.post(f"{API}/volumes/hp/detach"), 404, "NotFound")
    _error(world.clients["carol"].post(f"{API}/volumes/hp/detach"), 403, "Forbidden")
    detached = alice.post(f"{API}/volumes/hp/detach")
    assert detached.status_code == 200 and detached.json()["attached_to"] is None
    _error(alice.post(f"{API}/volumes/hp/detach"), 409, "Conflict")
    entries = list_entries(ctx, world.admin, AuditFilter(target_name="hp"))
    actions = {(e.action, e.outcome) for e in entries}
    assert {("volume.attach", "ok"), ("volume.detach", "ok"), ("volume.resize", "ok")} <= actions
    assert ("volume.attach", "InUse") in actions


# -- import and export -----------------------------------------------------------------------


@contextmanager
def _serving(world: World, user: str) -> Iterator[TestClient]:
    """``user``'s client with the app's lifespan running (its task pool)."""
    if user == "local":
        app = via(create_app(world.ctx), "unix")
        with TestClient(app) as client:
            yield client
        return
    secret = create_token(world.ctx, world.admin, user).secret
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(world.ctx), headers=headers) as client:
        yield client


def _disk(directory: Path, fmt: str) -> Path:
    """A 2 MiB disk in ``fmt`` holding a pattern, made by qemu-img."""
    raw = directory / "disk.raw"
    with raw.open("wb") as file:
        file.truncate(2 * MiB)
        file.write(b"corral" * 1000)
    dest = directory / f"disk.{fmt}"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(dest)], check=True)
    return dest


def test_upload_imports_a_vdi_as_a_qcow2_volume_and_exports_it(world: World) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp, _serving(world, "alice") as alice:
        source = _disk(Path(tmp), "vdi")
        answer = alice.put(
            f"{API}/volumes/uploaded/file",
            params={"project": "p1", "description": "from a vdi"},
            content=source.read_bytes(),
        )
        assert answer.status_code == 202, answer.text
        task = wait_task(alice, answer.json()["id"])
        assert task["status"] == "success", task
        assert task["name"] == "volume.import" and "uploaded (2 MiB)" in task["detail"]
        body = alice.get(f"{API}/volumes/uploaded", params={"project": "p1"}).json()
        assert body["format"] == "qcow2" and body["size"] == 2 * MiB
        assert body["description"] == "from a vdi"
        assert _qemu_img("info", "-f", "qcow2", str(_file(world.ctx, "uploaded")))["format"]

        exported = alice.get(f"{API}/volumes/uploaded/file", params={"format": "raw"})
        assert exported.status_code == 200, exported.text
        assert exported.headers["content-type"] == "application/octet-stream"
        assert exported.content == (Path(tmp) / "disk.raw").read_bytes()
    assert not [p for p in _pool(world.ctx) if p.startswith(".")]  # no copy, no spool left
    assert not list((world.ctx.home.images / ".uploads").glob("*"))


def test_import_refusals_name_the_field_role_or_project(world: World) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        source = _disk(Path(tmp), "vmdk")
        data = source.read_bytes()
        rows, pool = _rows(world.ctx), _pool(world.ctx)
        with _serving(world, "carol") as carol:  # a viewer of p1
            put = carol.put(f"{API}/volumes/v/file", params={"project": "p1"}, content=data)
            _error(put, 403, "Forbidden")
            # a viewer may read, and so export, p1's volumes
        with _serving(world, "bob") as bob:  # p1 is not bob's: as if it did not exist
            put = bob.put(f"{API}/volumes/v/file", params={"project": "p1"}, content=data)
            _error(put, 404, "NotFound")
        with _serving(world, "alice") as alice:
            bad = alice.put(
                f"{API}/volumes/v/file", params={"project": "p1", "format": "iso"}, content=data
            )
            assert bad.status_code == 422, bad.text
            empty = alice.put(f"{API}/volumes/v/file", params={"project": "p1"}, content=b"")
            assert _error(empty, 422, "InvalidInput")["field"] == "file"
            host = alice.post(
                f"{API}/volumes/import", json={"name": "v", "path": str(source), "project": "p1"}
            )
            _error(host, 403, "Forbidden")  # a host file: admins only
        with _serving(world, "local") as local:
            relative = local.post(
                f"{API}/volumes/import", json={"name": "v", "path": "disk.vmdk", "project": "p1"}
            )
            assert _error(relative, 422, "InvalidInput")["field"] == "path"
            named = local.post(
                f"{API}/volumes/import", json={"name": "V!", "path": str(source), "project": "p1"}
            )
            assert named.status_code == 422, named.text
        assert _rows(world.ctx) == rows and _pool(world.ctx) == pool
    refused = list_entries(world.ctx, world.admin, AuditFilter(action="volume.import"))
    assert {e.outcome for e in refused} >= {"Forbidden", "NotFound", "InvalidInput"}


def test_a_backing_file_qcow2_upload_fails_its_task_leaving_nothing(world: World) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp, _serving(world, "alice") as alice:
        base = _disk(Path(tmp), "qcow2")
        overlay = Path(tmp) / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
            check=True,
            capture_output=True,
        )
        rows, pool = _rows(world.ctx), _pool(world.ctx)
        answer = alice.put(
            f"{API}/volumes/overlaid/file",
            params={"project": "p1"},
            content=overlay.read_bytes(),
        )
        assert answer.status_code == 202, answer.text
        task = wait_task(alice, answer.json()["id"])
        assert task["status"] == "error", task
        assert "backing file" in task["error"] and "upload of volume 'overlaid'" in task["error"]
        assert _rows(world.ctx) == rows and _pool(world.ctx) == pool
        assert not list((world.ctx.home.images / ".uploads").glob("*"))


def test_export_of_another_projects_volume_is_404_and_bad_format_422(world: World) -> None:
    volumes_module.create_volume(world.ctx, world.admin, "bobs-export", "4M", project="p2")
    with _serving(world, "alice") as alice:
        hidden = alice.get(f"{API}/volumes/bobs-export/file", params={"format": "raw"})
        _error(hidden, 404, "NotFound")
    with _serving(world, "bob") as bob:
        bad = bob.get(f"{API}/volumes/bobs-export/file", params={"format": "iso"})
        assert bad.status_code == 422, bad.text
        good = bob.get(f"{API}/volumes/bobs-export/file", params={"format": "qcow2"})
        assert good.status_code == 200 and good.content[:4] == b"QFI\xfb"


def _rows(ctx: Corral) -> set[tuple[str, str]]:
    with ctx.db.session() as session:
        return {(r.name, r.project_id) for r in session.scalars(select(VolumeRow))}
