"""Reading through the API: real records in a real state directory, over ASGI in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from corral.api.app import create_app
from corral.api.auth import via
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.reference import ensure_reference
from corral.config import Home


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    ctx = Corral(Home(tmp_path_factory.mktemp("api")))
    ensure_reference(ctx)
    for i in range(5):
        create(ctx, CreateRequest(name=f"vm-{i}", image="reference", memory="128M"))
    # As on the daemon's UNIX socket: the local administrator.
    with TestClient(via(create_app(ctx), "unix")) as c:
        yield c
    ctx.close()


def test_list_vms_paginates_and_filters(client: TestClient) -> None:
    first = client.get("/api/v1/vms", params={"limit": 2}).json()
    assert first["total"] == 5 and first["limit"] == 2 and first["offset"] == 0
    assert [v["name"] for v in first["items"]] == ["vm-0", "vm-1"]
    last = client.get("/api/v1/vms", params={"limit": 2, "offset": 4}).json()
    assert [v["name"] for v in last["items"]] == ["vm-4"]
    defined = client.get("/api/v1/vms", params={"state": "defined", "name": "-3"}).json()
    assert [v["name"] for v in defined["items"]] == ["vm-3"]
    assert client.get("/api/v1/vms", params={"state": "running"}).json()["total"] == 0


def test_one_vm_and_unknown_names(client: TestClient) -> None:
    vm = client.get("/api/v1/vms/vm-2").json()
    assert vm["state"] == "defined" and vm["memory"] == 128 << 20 and vm["image"] == "reference"
    missing = client.get("/api/v1/vms/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "NotFound",
        "message": "vm 'nope' not found",
        "field": None,
    }


def test_bad_query_is_422_naming_the_field(client: TestClient) -> None:
    answer = client.get("/api/v1/vms", params={"limit": 0})
    assert answer.status_code == 422
    assert answer.json()["field"] == "limit"
    answer = client.get("/api/v1/vms", params={"state": "sleeping"})
    assert answer.status_code == 422 and answer.json()["field"] == "state"


def test_images_types_keypairs_host(client: TestClient) -> None:
    images = client.get("/api/v1/images").json()["items"]
    reference = next(i for i in images if i["name"] == "reference")
    assert reference["boot"] == "kernel" and len(reference["used_by"]) == 5
    assert client.get("/api/v1/images/reference").json()["ssh_user"] == "root"
    types = client.get("/api/v1/instance-types").json()
    assert "t1.micro" in [t["name"] for t in types["items"]]
    micro = client.get("/api/v1/instance-types/t1.micro").json()
    assert micro["vcpus"] == 1 and micro["memory"] == 512 << 20
    assert client.get("/api/v1/instance-types/x9.huge").status_code == 404
    assert client.get("/api/v1/keypairs").json()["total"] == 0
    host = client.get("/api/v1/host").json()
    assert host["cpus"] >= 1 and host["memory_total"] > host["memory_used"] > 0
    assert host["vms_total"] == 5 and host["vms_running"] == 0
    assert host["datastore_capacity"] >= host["datastore_free"] > 0
