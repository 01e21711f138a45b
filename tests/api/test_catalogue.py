"""The catalogue's changes over the API, in-process on a real state directory with the real
qemu-img: importing images (a host path, an upload), updating and deleting them, registering
and deleting key pairs; who may, what another project sees, and the audit log.

Users: ``alice`` (operator of p1 and of default), ``vera`` (viewer of p1), over TCP with
tokens; the local administrator on the UNIX socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.access.audit import AuditEntry, AuditFilter, list_entries
from corral.access.local import local_principal
from corral.access.projects import create_project
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import create_app
from corral.api.auth import via
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.keys import new_key
from corral.config import Home
from corral.storage import uploads

API = "/api/v1"
FINAL = {"success", "error", "cancelled"}

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


@dataclass
class World:
    ctx: Corral
    root: Path
    admin: TestClient
    alice: TestClient
    vera: TestClient


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))
    ctx = Corral(Home(root / "home"))
    admin = local_principal(ctx, os.geteuid())
    for project in ("p1", "p2"):
        create_project(ctx, admin, project)
    create_user(ctx, admin, "alice", "operator", ["p1", "default"])
    create_user(ctx, admin, "vera", "viewer", ["p1"])

    def tcp(user: str) -> TestClient:
        secret = create_token(ctx, admin, user).secret
        return TestClient(create_app(ctx), headers={"Authorization": f"Bearer {secret}"})

    # Every app starts (and ends earlier daemons' tasks) before any task runs.
    with TestClient(via(create_app(ctx), "unix")) as a, tcp("alice") as b, tcp("vera") as c:
        yield World(ctx, root, a, b, c)
    ctx.close()
    shutil.rmtree(root, ignore_errors=True)


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def disk(world: World, name: str, fmt: str = "qcow2", size: str = "64M") -> Path:
    path = world.root / f"{name}.{fmt}"
    path.unlink(missing_ok=True)
    qemu_img("create", "-q", "-f", fmt, path, size)
    return path


def corrupt_qcow2(world: World, name: str) -> Path:
    """A qcow2 whose L1 table is far outside the file (qemu-img refuses to read it)."""
    path = disk(world, name)
    with path.open("r+b") as f:
        f.seek(40)
        f.write((1 << 62).to_bytes(8, "big"))
    return path


def wait_task(client: TestClient, task_id: str, deadline: float = 120.0) -> dict[str, Any]:
    """Poll the task until its status is final."""
    end = time.monotonic() + deadline
    while True:
        task: dict[str, Any] = client.get(f"{API}/tasks/{task_id}").json()
        if task["status"] in FINAL:
            return task
        assert time.monotonic() < end, f"task still {task['status']}: {task}"
        time.sleep(0.05)


def upload(client: TestClient, name: str, data: Any, **params: str) -> Any:
    return client.put(f"{API}/images/{name}/file", params=params, content=data)


def imported(client: TestClient, answer: Any) -> dict[str, Any]:
    """The image an import's 202 made, once its task succeeded."""
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"{API}/tasks/{answer.json()['id']}"
    task = wait_task(client, answer.json()["id"])
    assert task["status"] == "success", task
    name = task["target_name"]
    image: dict[str, Any] = client.get(f"{API}/images/{name}").json()
    return image


def spooled(world: World) -> list[Path]:
    directory = uploads.spool(world.ctx.home.images)
    return sorted(directory.iterdir()) if directory.exists() else []


def entries(world: World, action: str, name: str) -> list[AuditEntry]:
    admin = local_principal(world.ctx, os.geteuid())
    return list_entries(world.ctx, admin, AuditFilter(action=action, target_name=name))


def error(answer: Any, status: int, kind: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["error"] == kind, body
    return body


# -- images ------------------------------------------------------------------------------------


def test_upload_of_a_qcow2_is_imported_by_a_task(world: World) -> None:
    source = disk(world, "up-qcow2")
    qemu_io = shutil.which("qemu-io")
    if qemu_io:
        subprocess.run([qemu_io, "-f", "qcow2", "-c", "write -P 7 0 1M", str(source)], check=True)
    image = imported(
        world.admin, upload(world.admin, "up-qcow2", source.read_bytes(), os_hint="debian 12")
    )
    assert image["source_format"] == "qcow2" and image["format"] == "qcow2"
    assert image["virtual_size"] == 64 << 20
    assert image["project"] == "default" and image["ssh_user"] == "debian"
    assert Path(image["path"]).is_file() and image["path"].startswith(str(world.ctx.home.images))
    assert spooled(world) == []
    [entry] = entries(world, "image.import", "up-qcow2")
    assert entry.outcome == "ok" and entry.actor.startswith("local:")


def test_upload_of_a_vmdk_made_by_qemu_img(world: World) -> None:
    source = disk(world, "up-vmdk", "vmdk", "32M")
    # Sent in pieces without a Content-Length (chunked), as a client streaming a file does.
    data = source.read_bytes()
    pieces = (data[i : i + 65536] for i in range(0, len(data), 65536))
    image = imported(world.alice, upload(world.alice, "up-vmdk", pieces, project="p1"))
    assert image["source_format"] == "vmdk" and image["virtual_size"] == 32 << 20
    assert image["project"] == "p1"
    assert spooled(world) == []


def test_corrupt_upload_is_refused_at_once_and_leaves_nothing(world: World) -> None:
    tasks_before = world.admin.get(f"{API}/tasks").json()["total"]
    answer = upload(world.admin, "up-bad", corrupt_qcow2(world, "up-bad").read_bytes())
    body = error(answer, 422, "ImageError")
    assert body["message"].startswith("upload of image 'up-bad': ")
    assert ".uploads" not in body["message"]
    assert world.admin.get(f"{API}/images/up-bad").status_code == 404
    assert not world.ctx.home.image_dir("up-bad").exists()
    assert spooled(world) == []
    assert world.admin.get(f"{API}/tasks").json()["total"] == tasks_before
    [entry] = entries(world, "image.import", "up-bad")
    assert entry.outcome == "ImageError" and entry.detail["source"] == "upload"


def test_upload_refusals(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    data = disk(world, "up-small").read_bytes()
    assert error(upload(world.admin, "up-empty", b""), 422, "InvalidInput")["field"] == "file"
    body = error(upload(world.admin, "Bad_Name", data), 422, "InvalidInput")
    assert body["field"] == "name"
    body = error(upload(world.admin, "up-x", data, format="vhdx"), 422, "InvalidInput")
    assert body["field"] == "format"
    body = error(upload(world.admin, "up-x", data, colour="blue"), 422, "InvalidInput")
    assert body["field"] == "colour"
    body = error(upload(world.admin, "up-x", data, ssh_user="Not A User"), 422, "InvalidInput")
    assert body["field"] == "ssh_user"
    body = error(upload(world.admin, "up-x", data, format="raw"), 422, "ImageError")
    assert "declared raw but its header says qcow2" in body["message"]
    error(upload(world.admin, "up-x", data, project="nope"), 404, "NotFound")
    # A body larger than the limit: said up front (Content-Length), or found while reading.
    monkeypatch.setattr(uploads, "MAX_UPLOAD", 64 * 1024)
    body = error(upload(world.admin, "up-x", data), 422, "InvalidInput")
    assert body["field"] == "file" and "larger than" in body["message"]
    pieces = (data[i : i + 16384] for i in range(0, len(data), 16384))
    body = error(upload(world.admin, "up-x", pieces), 422, "InvalidInput")
    assert body["field"] == "file" and "larger than" in body["message"]
    assert spooled(world) == []
    assert world.admin.get(f"{API}/images/up-x").status_code == 404


def test_import_of_a_host_path_is_for_admins(world: World) -> None:
    source = disk(world, "host-raw", "raw", "16M")
    answer = world.admin.post(
        f"{API}/images", json={"name": "host-raw", "path": str(source), "ready_marker": "READY"}
    )
    image = imported(world.admin, answer)
    assert image["source_format"] == "raw" and image["ready_marker"] == "READY"
    assert error(
        world.admin.post(f"{API}/images", json={"name": "host-raw", "path": str(source)}),
        409,
        "AlreadyExists",
    )
    # An operator may create images, but not read the daemon host's files.
    answer = world.alice.post(
        f"{API}/images", json={"name": "alices", "path": str(source), "project": "p1"}
    )
    assert "files of corrald's host" in error(answer, 403, "Forbidden")["message"]
    answer = world.admin.post(f"{API}/images", json={"name": "rel", "path": "disk.img"})
    assert error(answer, 422, "InvalidInput")["field"] == "path"
    answer = world.admin.post(
        f"{API}/images", json={"name": "gone", "path": str(world.root / "none")}
    )
    assert "does not exist" in error(answer, 422, "ImageError")["message"]
    answer = world.admin.post(f"{API}/images", json={"name": "x", "path": "/x", "size": 1})
    assert error(answer, 422, "InvalidInput")["field"] == "size"
    assert [e.outcome for e in entries(world, "image.import", "alices")] == ["Forbidden"]


def test_viewers_and_other_projects(world: World) -> None:
    data = disk(world, "vera-img").read_bytes()
    # A viewer of p1 may not import into it; nobody sees into a project that is not theirs.
    assert (
        "vera (viewer) may not create"
        in error(upload(world.vera, "vera-img", data, project="p1"), 403, "Forbidden")["message"]
    )
    error(upload(world.alice, "alice-p2", data, project="p2"), 404, "NotFound")
    imported(world.admin, upload(world.admin, "p2-img", data, project="p2"))
    for client in (world.alice, world.vera):
        for answer in (
            client.get(f"{API}/images/p2-img"),
            client.patch(f"{API}/images/p2-img", json={"os_hint": "x"}),
            client.delete(f"{API}/images/p2-img"),
        ):
            assert error(answer, 404, "NotFound")["message"] == "image 'p2-img' not found"
        assert "p2-img" not in [i["name"] for i in client.get(f"{API}/images").json()["items"]]
    assert world.admin.get(f"{API}/images/p2-img").json()["os_hint"] == ""
    # Vera sees p1's image, and may neither change nor delete it.
    imported(world.alice, upload(world.alice, "p1-img", data, project="p1"))
    assert world.vera.get(f"{API}/images/p1-img").status_code == 200
    error(world.vera.patch(f"{API}/images/p1-img", json={"os_hint": "x"}), 403, "Forbidden")
    error(world.vera.delete(f"{API}/images/p1-img"), 403, "Forbidden")
    assert world.vera.get(f"{API}/images/p1-img").json()["os_hint"] == ""


def test_update_image(world: World) -> None:
    imported(world.alice, upload(world.alice, "upd", disk(world, "upd").read_bytes(), project="p1"))
    answer = world.alice.patch(
        f"{API}/images/upd", json={"os_hint": "ubuntu 24.04", "ready_marker": "UP"}
    )
    assert answer.status_code == 200, answer.text
    image = answer.json()
    assert image["os_hint"] == "ubuntu 24.04" and image["ssh_user"] == "ubuntu"
    assert image["ready_marker"] == "UP"
    image = world.alice.patch(
        f"{API}/images/upd", json={"ssh_user": "ops", "ready_marker": ""}
    ).json()
    assert image["ssh_user"] == "ops" and image["ready_marker"] is None
    assert image["os_hint"] == "ubuntu 24.04"  # left out: unchanged
    answer = world.alice.patch(f"{API}/images/upd", json={"os_hint": "two\nlines"})
    assert error(answer, 422, "InvalidInput")["field"] == "os_hint"
    answer = world.alice.patch(f"{API}/images/upd", json={"sha256": "0" * 64})
    assert error(answer, 422, "InvalidInput")["field"] == "sha256"
    error(world.alice.patch(f"{API}/images/nope", json={"os_hint": "x"}), 404, "NotFound")
    outcomes = [e.outcome for e in entries(world, "image.update", "upd")]
    assert outcomes == ["InvalidInput", "ok", "ok"]  # newest first


def test_delete_image_in_use_and_not(world: World) -> None:
    imported(world.admin, upload(world.admin, "shared", disk(world, "shared").read_bytes()))
    create(world.ctx, CreateRequest(name="dflt-user", image="shared", memory="128M"))
    create(world.ctx, CreateRequest(name="p2-user", image="shared", memory="128M", project="p2"))
    body = error(world.admin.delete(f"{API}/images/shared"), 409, "InUse")
    assert body["message"] == "image 'shared' is in use by dflt-user, p2-user"
    # alice (default and p1) may delete it, and is not told the name of p2's VM.
    body = error(world.alice.delete(f"{API}/images/shared"), 409, "InUse")
    assert body["message"] == "image 'shared' is in use by dflt-user, 1 VM of other projects"
    assert world.admin.get(f"{API}/images/shared").status_code == 200
    imported(
        world.alice, upload(world.alice, "unused", disk(world, "unused").read_bytes(), project="p1")
    )
    answer = world.alice.delete(f"{API}/images/unused")
    assert answer.status_code == 200 and answer.json()["name"] == "unused"
    assert world.alice.get(f"{API}/images/unused").status_code == 404
    assert not world.ctx.home.image_dir("unused").exists()
    error(world.alice.delete(f"{API}/images/unused"), 404, "NotFound")
    assert [e.outcome for e in entries(world, "image.delete", "unused")] == ["NotFound", "ok"]
    assert [e.project for e in entries(world, "image.delete", "unused")][1] == "p1"


# -- key pairs ---------------------------------------------------------------------------------


def public_key(name: str) -> str:
    return new_key(name)[1].line


def test_register_show_and_delete_a_key_pair(world: World) -> None:
    line = public_key("reg")
    body = {
        "name": "reg",
        "public_key": line,
        "project": "p1",
        "private_key_path": "/home/a/.ssh/corral-reg",
    }
    answer = world.alice.post(f"{API}/keypairs", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"] == f"{API}/keypairs/reg"
    key = answer.json()
    assert key["public_key"] == line and key["kind"] == "ssh-ed25519" and key["bits"] == 256
    assert key["project"] == "p1" and key["private_key_path"] == "/home/a/.ssh/corral-reg"
    assert world.vera.get(f"{API}/keypairs/reg").json() == key
    error(world.alice.post(f"{API}/keypairs", json=body), 409, "AlreadyExists")
    error(world.vera.delete(f"{API}/keypairs/reg"), 403, "Forbidden")
    answer = world.alice.delete(f"{API}/keypairs/reg")
    assert answer.status_code == 200 and answer.json() == key
    error(world.alice.get(f"{API}/keypairs/reg"), 404, "NotFound")
    assert [e.outcome for e in entries(world, "keypair.create", "reg")] == ["AlreadyExists", "ok"]
    [deleted] = entries(world, "keypair.delete", "reg")[:1]
    assert deleted.outcome == "ok" and deleted.detail["fingerprint"] == key["fingerprint"]


def test_key_pair_refusals(world: World) -> None:
    def post(client: TestClient, **fields: Any) -> Any:
        return client.post(
            f"{API}/keypairs",
            json={"name": "k1", "public_key": public_key("k1"), "project": "p1", **fields},
        )

    assert error(post(world.alice, name="Bad/Name"), 422, "InvalidInput")["field"] == "name"
    assert (
        error(
            post(world.alice, public_key="ssh-dss AAAAB3NzaC1kc3MAAACBAP8= me"), 422, "InvalidInput"
        )["field"]
        == "public_key"
    )
    secret = new_key("k1")[0].decode()
    body = error(post(world.alice, public_key=secret), 422, "InvalidInput")
    assert body["field"] == "public_key" and "private key" in body["message"]
    assert secret.splitlines()[1] not in body["message"]  # never echoed
    for path in ("relative/key", "/home/a/id.pub", "/a\nb"):
        assert (
            error(post(world.alice, private_key_path=path), 422, "InvalidInput")["field"]
            == "private_key_path"
        )
    assert error(post(world.alice, comment="x"), 422, "InvalidInput")["field"] == "comment"
    assert "vera (viewer) may not create" in error(post(world.vera), 403, "Forbidden")["message"]
    error(post(world.alice, project="p2"), 404, "NotFound")
    assert world.admin.get(f"{API}/keypairs/k1").status_code == 404  # nothing was made


def test_other_projects_key_pairs_are_not_found(world: World) -> None:
    answer = world.admin.post(
        f"{API}/keypairs", json={"name": "p2-key", "public_key": public_key("p2"), "project": "p2"}
    )
    assert answer.status_code == 201, answer.text
    for client in (world.alice, world.vera):
        error(client.get(f"{API}/keypairs/p2-key"), 404, "NotFound")
        error(client.delete(f"{API}/keypairs/p2-key"), 404, "NotFound")
        assert "p2-key" not in [k["name"] for k in client.get(f"{API}/keypairs").json()["items"]]
    assert world.admin.get(f"{API}/keypairs/p2-key").status_code == 200


# -- instance types ----------------------------------------------------------------------------


def test_instance_types_are_read_only(world: World) -> None:
    assert world.vera.get(f"{API}/instance-types/t1.micro").json()["vcpus"] == 1
    answer = world.admin.post(f"{API}/instance-types", json={"name": "x1.big"})
    assert answer.status_code == 405 and answer.json()["error"] == "MethodNotAllowed"
