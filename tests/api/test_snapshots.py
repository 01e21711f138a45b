"""``/vms/{name}/snapshots``: another project's VM answers 404 as an absent one, a bad
snapshot name is a 422 naming the field, a state that forbids the action a 409 naming it
(revert of a running VM: "stop it first"), two layers on a snapshot a 409; taking, reverting
and deleting are tasks, audited, and the tree reads back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.support import (
    API,
    act,
    admin_client,
    audit_entries,
    state_dir,
    user_client,
    wait_task,
)


@pytest.fixture(scope="module")
def ctx() -> Iterator[Any]:
    users = {"alice": ("operator", ["p1"]), "bob": ("operator", ["p2"])}
    with state_dir("sn-", ["p1", "p2"], users) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Any) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


def define(client: TestClient, name: str, project: str) -> None:
    body = {"name": name, "image": "reference", "memory": "128M", "project": project}
    answer = client.post(f"{API}/vms", json=body)
    assert answer.status_code == 201, answer.text


def snap(client: TestClient, vm: str, name: str, **extra: Any) -> dict[str, Any]:
    answer = client.post(f"{API}/vms/{vm}/snapshots", json={"name": name, **extra})
    assert answer.status_code == 202, answer.text
    return wait_task(client, answer.json()["id"])


def tree(client: TestClient, vm: str) -> list[tuple[str, str | None, bool]]:
    page = client.get(f"{API}/vms/{vm}/snapshots").json()
    return [(s["name"], s["parent"], s["current"]) for s in page["items"]]


def test_tree_reads_back_and_actions_are_audited(api: TestClient) -> None:
    define(api, "sa", "p1")
    assert snap(api, "sa", "one", description="first")["status"] == "success"
    assert snap(api, "sa", "two")["status"] == "success"
    assert tree(api, "sa") == [("one", None, False), ("two", "one", True)]
    one = api.get(f"{API}/vms/sa/snapshots/one").json()
    assert (one["description"], one["kind"], one["vm_state"]) == ("first", "disk", "defined")
    plan = api.get(f"{API}/vms/sa/snapshots/one/revert-plan").json()
    assert plan["steps"][0].startswith("nothing is lost")
    assert act(api, "sa", "snapshots/one/revert")["status"] == "success"
    assert tree(api, "sa") == [("one", None, True), ("two", "one", False)]
    # Now the VM and "two" are both built on "one".
    refused = api.delete(f"{API}/vms/sa/snapshots/one")
    assert refused.status_code == 409
    assert "2 layers are built on it" in refused.json()["message"]
    assert api.get(f"{API}/vms/sa/snapshots/one/delete-plan").status_code == 409
    gone = api.delete(f"{API}/vms/sa/snapshots/two")
    assert gone.status_code == 202
    assert wait_task(api, gone.json()["id"])["status"] == "success"
    assert tree(api, "sa") == [("one", None, True)]
    verbs = [(e["action"], e["outcome"]) for e in audit_entries(api, "sa")]
    for verb in ("vm.snapshot", "vm.revert", "vm.snapshot-delete"):
        assert (verb, "ok") in verbs, verbs
    assert ("vm.snapshot-delete", "Conflict") in verbs


def test_bad_names_are_422_naming_the_field(api: TestClient) -> None:
    define(api, "sb", "p1")
    for bad in ("", "Upper", "a b", "-x", "x" * 64):
        answer = api.post(f"{API}/vms/sb/snapshots", json={"name": bad})
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["field"] == "name"
    answer = api.post(f"{API}/vms/sb/snapshots", json={"name": "ok", "extra": 1})
    assert answer.status_code == 422
    assert api.get(f"{API}/vms/sb/snapshots/Bad%20Name").status_code == 422
    assert snap(api, "sb", "ok")["status"] == "success"
    taken = api.post(f"{API}/vms/sb/snapshots", json={"name": "ok"})
    assert taken.status_code == 409
    assert api.get(f"{API}/vms/sb/snapshots/nope").status_code == 404
    assert api.post(f"{API}/vms/sb/snapshots/nope/revert").status_code == 404


def test_another_projects_vm_answers_as_an_absent_one(ctx: Any, api: TestClient) -> None:
    define(api, "sc", "p1")
    assert snap(api, "sc", "mine")["status"] == "success"
    with user_client(ctx, "bob") as bob:
        for method, path in (
            ("GET", "/vms/sc/snapshots"),
            ("GET", "/vms/sc/snapshots/mine"),
            ("GET", "/vms/sc/snapshots/mine/revert-plan"),
            ("GET", "/vms/sc/snapshots/mine/delete-plan"),
            ("POST", "/vms/sc/snapshots/mine/revert"),
            ("DELETE", "/vms/sc/snapshots/mine"),
        ):
            theirs = bob.request(method, f"{API}{path}")
            absent = bob.request(method, f"{API}{path.replace('/sc/', '/nosuchvm/')}")
            assert theirs.status_code == absent.status_code == 404, (path, theirs.text)
            assert theirs.json()["message"].replace("sc", "X") == absent.json()["message"].replace(
                "nosuchvm", "X"
            )
        answer = bob.post(f"{API}/vms/sc/snapshots", json={"name": "theirs"})
        assert answer.status_code == 404
    assert tree(api, "sc") == [("mine", None, True)]


def test_revert_of_a_running_vm_is_409_stop_it_first(api: TestClient) -> None:
    define(api, "sd", "p1")
    assert act(api, "sd", "start", wait=True)["status"] == "success"
    assert snap(api, "sd", "live")["status"] == "success"
    assert tree(api, "sd") == [("live", None, True)]
    answer = api.post(f"{API}/vms/sd/snapshots/live/revert")
    assert answer.status_code == 409
    error = answer.json()
    assert "it is running" in error["message"] and "stop it first" in error["message"]
    assert act(api, "sd", "destroy")["status"] == "success"
    assert act(api, "sd", "snapshots/live/revert")["status"] == "success"
