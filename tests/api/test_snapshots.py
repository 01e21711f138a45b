"""``/vms/{name}/snapshots``: another project's VM answers 404 as an absent one, a bad
snapshot name is a 422 naming the field, a state that forbids the action a 409 naming it
(revert of a running VM: "stop it first"); taking, reverting and deleting (also a snapshot
two layers are built on, merged into both) are tasks, audited, and the tree reads back."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.support import (  # noqa: F401 (ctx and api are fixtures)
    API,
    act,
    audit_entries,
    define,
    two_projects,
    two_projects_admin,
    user_client,
    wait_task,
)

STATE_PREFIX = "sn-"


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
    # Now the VM and "two" are both built on "one": deleting it merges it into both.
    plan = api.get(f"{API}/vms/sa/snapshots/one/delete-plan")
    assert plan.status_code == 200, plan.text
    steps = plan.json()["steps"]
    assert steps[0] == "snapshot 'one' is merged into two and the VM's current state of vm 'sa'"
    merges = [s for s in steps if "(with qemu-img)" in s]
    assert len(merges) == 2, steps
    assert any("disk use grows by up to 1 copies" in s for s in steps), steps
    merged = api.delete(f"{API}/vms/sa/snapshots/one")
    assert merged.status_code == 202, merged.text
    assert wait_task(api, merged.json()["id"])["status"] == "success"
    assert tree(api, "sa") == [("two", None, False)]
    gone = api.delete(f"{API}/vms/sa/snapshots/two")
    assert gone.status_code == 202
    assert wait_task(api, gone.json()["id"])["status"] == "success"
    assert tree(api, "sa") == []
    assert api.delete(f"{API}/vms/sa/snapshots/two").status_code == 404
    verbs = [(e["action"], e["outcome"]) for e in audit_entries(api, "sa")]
    for verb in ("vm.snapshot", "vm.revert", "vm.snapshot-delete"):
        assert (verb, "ok") in verbs, verbs
    assert sum(v == ("vm.snapshot-delete", "ok") for v in verbs) == 2, verbs


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
