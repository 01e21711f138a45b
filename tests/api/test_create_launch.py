"""Creating through the API, with real QEMU: ``POST /vms`` defines a VM at once (201);
``POST /launch`` answers 202 with a task that ends once the instances answer SSH, and refuses
what its check refuses before any task exists. Another project is 404 to a non-member.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.access.local import local_principal
from corral.access.quotas import set_quota
from corral.compute.context import Corral
from corral.compute.keys import create_key
from corral.compute.ssh import wait_for_sshd
from tests.api.support import API, admin_client, state_dir, user_client, wait_task


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    """A state directory with the reference image, projects p1 and p2, and the operator
    alice (member of p1 only)."""
    with state_dir("cl-", ["p1", "p2"], {"alice": ("operator", ["p1"])}) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


@pytest.fixture(scope="module")
def alice(ctx: Corral) -> Iterator[TestClient]:
    """The operator of p1, with a token over TCP."""
    with user_client(ctx, "alice") as client:
        yield client


def task_count(client: TestClient) -> int:
    total: int = client.get(f"{API}/tasks").json()["total"]
    return total


def test_create_answers_201_and_the_vm_is_listed(api: TestClient) -> None:
    body = {"name": "c-one", "image": "reference", "memory": "128M", "forwards": ["2299:22"]}
    answer = api.post(f"{API}/vms", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"] == f"{API}/vms/c-one"
    vm = answer.json()
    assert vm["name"] == "c-one" and vm["state"] == "defined" and vm["project"] == "default"
    assert vm["memory"] == 128 << 20 and vm["vcpus"] == 1 and vm["image"] == "reference"
    assert vm["forwards"] and "2299" in vm["forwards"][0]
    assert api.get(f"{API}/vms/c-one").json() == vm
    listed = api.get(f"{API}/vms", params={"name": "c-one"}).json()["items"]
    assert [v["name"] for v in listed] == ["c-one"]
    taken = api.post(f"{API}/vms", json={"name": "c-one", "image": "reference"})
    assert taken.status_code == 409
    assert taken.json()["error"] == "AlreadyExists" and "c-one" in taken.json()["message"]


def test_create_refusals(api: TestClient) -> None:
    bad_memory = api.post(f"{API}/vms", json={"name": "c-bad", "memory": "lots"})
    assert bad_memory.status_code == 422
    assert bad_memory.json()["error"] == "InvalidInput"
    assert bad_memory.json()["field"] == "memory"
    unknown_field = api.post(f"{API}/vms", json={"name": "c-bad", "colour": "red"})
    assert unknown_field.status_code == 422 and unknown_field.json()["field"] == "colour"
    bad_name = api.post(f"{API}/vms", json={"name": "Bad_Name"})
    assert bad_name.status_code == 422 and bad_name.json()["field"] == "name"
    no_image = api.post(f"{API}/vms", json={"name": "c-bad", "image": "no-such-image"})
    assert no_image.status_code == 404
    assert no_image.json()["message"] == "image 'no-such-image' not found"
    no_project = api.post(f"{API}/vms", json={"name": "c-bad", "project": "nope"})
    assert no_project.status_code == 404
    assert no_project.json()["message"] == "project 'nope' not found"
    assert api.get(f"{API}/vms/c-bad").status_code == 404


def test_operator_creates_only_in_own_projects(alice: TestClient) -> None:
    body = {"name": "c-alice", "image": "reference", "memory": "128M"}
    hidden = alice.post(f"{API}/vms", json=body | {"project": "p2"})
    missing = alice.post(f"{API}/vms", json=body | {"project": "p9"})
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["message"] == "project 'p2' not found"
    assert alice.post(f"{API}/vms", json=body).status_code == 404  # not a member of default
    made = alice.post(f"{API}/vms", json=body | {"project": "p1"})
    assert made.status_code == 201, made.text
    assert made.json()["project"] == "p1"
    assert [v["name"] for v in alice.get(f"{API}/vms").json()["items"]] == ["c-alice"]


def test_create_takes_every_option_of_corral_create(api: TestClient) -> None:
    body = {
        "name": "c-full",
        "disk_size": "32M",
        "data_disks": ["16M", 8 << 20],
        "cpu": "qemu64",
        "vnc": True,
        "memory": "128M",
        "vcpus": 2,
        "project": "p1",
    }
    answer = api.post(f"{API}/vms", json=body)
    assert answer.status_code == 201, answer.text
    vm = answer.json()
    assert [(d["name"], d["provisioned"]) for d in vm["disks"]] == [
        ("root", 32 << 20),
        ("data1", 16 << 20),
        ("data2", 8 << 20),
    ]
    assert all(d["path"].endswith(f"/c-full/{d['name']}.qcow2") for d in vm["disks"])
    assert vm["vnc"].endswith("/c-full/vnc.sock") and vm["console"].endswith("serial.sock")
    assert vm["vcpus"] == 2 and vm["project"] == "p1"
    bad_cpu = api.post(f"{API}/vms", json=body | {"name": "c-cpu", "cpu": "no such cpu"})
    assert bad_cpu.status_code == 422 and bad_cpu.json()["field"] == "cpu"
    too_many = api.post(f"{API}/vms", json=body | {"name": "c-many", "data_disks": ["1M"] * 17})
    assert too_many.status_code == 422 and too_many.json()["field"] == "data_disks"


def test_list_filters_by_project_and_activity(api: TestClient, alice: TestClient) -> None:
    made = api.post(f"{API}/vms", json={"name": "c-filter", "disk_size": "8M", "project": "p1"})
    assert made.status_code == 201, made.text

    def names(client: TestClient, **query: str) -> list[str]:
        answer = client.get(f"{API}/vms", params=query)
        assert answer.status_code == 200, answer.text
        return [v["name"] for v in answer.json()["items"]]

    assert names(api, project="p1", name="c-filter") == ["c-filter"]
    assert names(api, project="p2", name="c-filter") == []
    assert names(api, active="false", name="c-filter") == ["c-filter"]
    assert names(api, active="true", name="c-filter") == []
    assert names(api, active="false", state="defined", name="c-filter") == ["c-filter"]
    assert names(api, active="true", state="defined") == []
    for client, project in ((api, "p9"), (alice, "p2")):  # none, and not alice's: the same
        unknown = client.get(f"{API}/vms", params={"project": project})
        assert unknown.status_code == 404
        assert unknown.json()["message"] == f"project '{project}' not found"
    assert api.get(f"{API}/vms", params={"active": "maybe"}).json()["field"] == "active"


def test_quota_exceeded_is_403_naming_it(ctx: Corral, api: TestClient) -> None:
    set_quota(ctx, local_principal(ctx, os.geteuid()), "p2", {"instances": 1})
    body = {"image": "reference", "memory": "128M", "project": "p2"}
    assert api.post(f"{API}/vms", json=body | {"name": "c-q1"}).status_code == 201
    over = api.post(f"{API}/vms", json=body | {"name": "c-q2"})
    assert over.status_code == 403
    assert over.json()["error"] == "QuotaExceeded"
    assert "quota instances of project 'p2'" in over.json()["message"]
    assert api.get(f"{API}/vms/c-q2").status_code == 404


@pytest.mark.tcg
def test_launch_runs_a_task_until_ssh_answers(
    ctx: Corral, alice: TestClient, tmp_path: Path
) -> None:
    create_key(ctx, "k", tmp_path / "k", project="p1")
    body = {
        "name": "web",
        "image": "reference",
        "instance_type": "t1.nano",
        "keypair": "k",
        "project": "p1",
    }
    answer = alice.post(f"{API}/launch", json=body)
    assert answer.status_code == 202, answer.text
    task = answer.json()
    assert answer.headers["location"] == f"{API}/tasks/{task['id']}"
    assert task["name"] == "vm.launch" and task["target_name"] == "web"
    assert task["status"] in {"queued", "running"} and task["initiated_by"] == "alice"
    done = wait_task(alice, task["id"], deadline=180.0)
    assert done["status"] == "success", done
    assert done["progress"] == 100 and done["error"] is None
    vm = alice.get(f"{API}/vms/web").json()
    assert vm["state"] == "running" and vm["project"] == "p1"
    assert vm["instance_type"] == "t1.nano" and vm["keypair"] == "k"
    host, port = vm["ssh"].rsplit("@", 1)[-1].rsplit(":", 1)
    assert done["detail"].startswith("1 instance ready: web (i-")
    assert f"port {port}" in done["detail"]
    wait_for_sshd("web", host, int(port), 10.0)  # the SSH- banner
    # The name is now taken: refused at once, as a second launch would be.
    before = task_count(alice)
    taken = alice.post(f"{API}/launch", json=body)
    assert taken.status_code == 409 and taken.json()["error"] == "AlreadyExists"
    assert task_count(alice) == before
    stopped = alice.post(f"{API}/vms/web/destroy")
    assert stopped.status_code == 202
    assert wait_task(alice, stopped.json()["id"])["status"] == "success"
    deleted = alice.delete(f"{API}/vms/web")
    assert deleted.status_code == 202
    assert wait_task(alice, deleted.json()["id"])["status"] == "success"
    assert alice.get(f"{API}/vms/web").status_code == 404


def test_launch_refusals_answer_at_once(ctx: Corral, api: TestClient, tmp_path: Path) -> None:
    create_key(ctx, "kd", tmp_path / "kd")
    body = {"name": "refused", "image": "reference", "instance_type": "t1.nano", "keypair": "kd"}
    before = task_count(api)
    no_type = api.post(f"{API}/launch", json=body | {"instance_type": "z9.huge"})
    assert no_type.status_code == 404 and no_type.json()["error"] == "NotFound"
    assert "instance type 'z9.huge'" in no_type.json()["message"]
    bad_data = api.post(f"{API}/launch", json=body | {"user_data": "#cloud-config\nruncmd: 7\n"})
    assert bad_data.status_code == 422, bad_data.text
    assert bad_data.json()["field"] == "user_data"
    no_key = api.post(f"{API}/launch", json=body | {"keypair": "nope"})
    assert no_key.status_code == 404 and no_key.json()["message"] == "key pair 'nope' not found"
    no_image = api.post(f"{API}/launch", json=body | {"image": "nope"})
    assert no_image.status_code == 404
    other_project = api.post(f"{API}/launch", json=body | {"project": "p1"})
    assert other_project.status_code == 404  # kd is default's, not p1's
    too_many = api.post(f"{API}/launch", json=body | {"count": 65})
    assert too_many.status_code == 422 and too_many.json()["field"] == "count"
    unknown = api.post(f"{API}/launch", json=body | {"wait": False})
    assert unknown.status_code == 422 and unknown.json()["field"] == "wait"
    assert task_count(api) == before  # no task for any of them
    assert api.get(f"{API}/vms/refused").status_code == 404


def test_launch_quota_is_refused_at_once(ctx: Corral, alice: TestClient, tmp_path: Path) -> None:
    admin = local_principal(ctx, os.geteuid())
    set_quota(ctx, admin, "p1", {"instances": 1})
    try:
        create_key(ctx, "kq", tmp_path / "kq", project="p1")
        before = task_count(alice)
        body = {
            "name": "many",
            "image": "reference",
            "instance_type": "t1.nano",
            "keypair": "kq",
            "project": "p1",
            "count": 3,
        }
        over = alice.post(f"{API}/launch", json=body)
        assert over.status_code == 403 and over.json()["error"] == "QuotaExceeded"
        assert "quota instances of project 'p1'" in over.json()["message"]
        assert task_count(alice) == before
    finally:
        set_quota(ctx, admin, "p1", {"instances": None})


@pytest.mark.tcg
def test_launch_reports_each_instances_phases_then_how_to_log_in(
    ctx: Corral, api: TestClient, alice: TestClient, tmp_path: Path
) -> None:
    """GET /launch/{task_id} answers at each change (after=N&wait=S) with every instance's
    phases; at the end, how each is reached; GET /vms/{name}/ssh then says how to log in.
    Neither shows anything to a user of another project."""
    create_key(ctx, "kp", tmp_path / "kp")
    body = {
        "name": "ph",
        "image": "reference",
        "instance_type": "t1.nano",
        "keypair": "kp",
        "count": 2,
        "isolated": True,
    }
    answer = api.post(f"{API}/launch", json=body)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    assert alice.get(f"{API}/launch/{task_id}").status_code == 404  # default is not hers
    seen: list[dict[str, Any]] = []
    version: int | None = None
    end = time.monotonic() + 180
    while True:
        params = {} if version is None else {"after": version, "wait": 10}
        now = api.get(f"{API}/launch/{task_id}", params=params)
        assert now.status_code == 200, now.text
        state: dict[str, Any] = now.json()
        assert version is None or state["version"] >= version
        seen.append(state)
        if state["status"] != "running":
            break
        assert time.monotonic() < end, f"the launch still runs: {state}"
        version = state["version"]
    final = seen[-1]
    assert final["status"] == "success" and final["error"] is None, final
    assert final["task_id"] == task_id and final["project"] == "default"
    assert [i["name"] for i in final["instances"]] == ["ph-1", "ph-2"]
    for instance in final["instances"]:
        assert instance["status"] == "ready" and instance["error"] is None
        assert list(instance["phases"]) == ["clone", "seed", "start", "boot", "ready"]
        assert all(p["state"] == "done" and p["seconds"] >= 0 for p in instance["phases"].values())
        assert instance["instance_id"].startswith("i-") and instance["user"] == "root"
        assert instance["ssh_command"][:3] == ["ssh", "-p", str(instance["port"])]
        assert instance["ssh_command"][-1] == "root@127.0.0.1"
    # It was followed as it went: instances pending, phases running, not one final answer.
    statuses = {i["status"] for state in seen for i in state["instances"]}
    assert {"pending", "running", "ready"} <= statuses
    running = [p for s in seen for i in s["instances"] for p in i["phases"].values()]
    assert any(p["state"] == "running" and p["seconds"] is None for p in running)
    assert len(seen) >= 5
    done = wait_task(api, task_id)
    assert done["status"] == "success" and done["detail"].startswith("2 instances ready: ph-1")

    first = final["instances"][0]
    ssh = api.get(f"{API}/vms/ph-1/ssh")
    assert ssh.status_code == 200, ssh.text
    access = ssh.json()
    assert (access["vm"], access["user"], access["keypair"]) == ("ph-1", "root", "kp")
    assert (access["address"], access["port"]) == ("127.0.0.1", first["port"])
    assert access["identity"] == str(tmp_path / "kp")
    assert access["host_key_alias"] == "ph-1.corral"
    assert access["host_keys"] and access["host_keys"][0].startswith("ssh-ed25519 AAAA")
    assert (
        Path(access["known_hosts"]).read_text().startswith(f"ph-1.corral {access['host_keys'][0]}")
    )
    wait_for_sshd("ph-1", access["address"], access["port"], 10.0)
    assert alice.get(f"{API}/vms/ph-1/ssh").status_code == 404
    assert alice.get(f"{API}/vms/ph-1/ssh").json()["message"] == "vm 'ph-1' not found"
