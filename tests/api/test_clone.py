"""``POST /vms/{name}/clone``: linked and full clones are tasks, audited, with a new identity;
another project's VM answers 404, a bad field 422 naming it, a name taken 409; deleting a VM
or a snapshot a linked clone reads is refused naming the clone; a running VM is cloned live."""

from __future__ import annotations

import json
from pathlib import Path
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

STATE_PREFIX = "cl-"


def clone(client: TestClient, source: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"{API}/vms/{source}/clone", json=body)
    assert answer.status_code == 202, answer.text
    return wait_task(client, answer.json()["id"])


def test_linked_clone_is_made_on_a_new_snapshot_with_a_new_identity(api: TestClient) -> None:
    define(api, "la", "p1", forwards=["tcp:127.0.0.1:2290:22", "tcp:127.0.0.1:8090:80"])
    done = clone(api, "la", name="lb")
    assert done["status"] == "success", done
    source, copy = api.get(f"{API}/vms/la").json(), api.get(f"{API}/vms/lb").json()
    assert copy["state"] == "defined" and copy["project"] == "p1"
    assert copy["uuid"] != source["uuid"]
    snaps = api.get(f"{API}/vms/la/snapshots").json()["items"]
    assert [s["name"] for s in snaps] == ["clone-lb"]
    assert any(e["action"] == "vm.clone" and e["outcome"] == "ok" for e in audit_entries(api, "la"))


def test_clone_keeps_only_a_reallocated_ssh_forward(ctx: Any, api: TestClient) -> None:
    from corral.compute import records

    with ctx.db.session() as session:
        src = records.load(ctx, session, "la").spec
        dst = records.load(ctx, session, "lb").spec
    forwards = dst.nics[0].forwards
    assert [f.guest_port for f in forwards] == [22]
    assert forwards[0].host_port != src.nics[0].forwards[0].host_port
    assert dst.nic_mac(0) != src.nic_mac(0)


def test_deleting_what_a_linked_clone_reads_is_refused_naming_it(api: TestClient) -> None:
    refused = wait_task(api, api.delete(f"{API}/vms/la").json()["id"])
    assert refused["status"] == "error" and "linked clone vm 'lb'" in refused["error"]
    assert api.get(f"{API}/vms/la").status_code == 200
    answer = api.delete(f"{API}/vms/la/snapshots/clone-lb")
    assert answer.status_code == 409, answer.text
    assert "linked clone vm 'lb'" in answer.json()["message"]
    deleted = api.delete(f"{API}/vms/lb")
    assert (
        deleted.status_code == 202 and wait_task(api, deleted.json()["id"])["status"] == "success"
    )
    gone = api.delete(f"{API}/vms/la/snapshots/clone-lb")
    assert gone.status_code == 202 and wait_task(api, gone.json()["id"])["status"] == "success"


def test_full_clone_stands_alone(ctx: Any, api: TestClient) -> None:
    define(api, "fa", "p1")
    done = clone(api, "fa", name="fb", mode="full", project="p2")
    assert done["status"] == "success", done
    assert api.get(f"{API}/vms/fb").json()["project"] == "p2"
    assert api.get(f"{API}/vms/fa/snapshots").json()["total"] == 0
    from corral.compute import records

    with ctx.db.session() as session:
        vm = records.load(ctx, session, "fb")
        assert vm.spec.disks[0].image is None and vm.paths.disks["root"].backing == ()
        assert json.loads(vm.row.disk_chain).get("base") is None
    assert Path(vm.paths.disks["root"].top.path).exists()
    deleted = api.delete(f"{API}/vms/fa")
    assert (
        deleted.status_code == 202 and wait_task(api, deleted.json()["id"])["status"] == "success"
    )


def test_clones_of_a_running_vm_now_and_at_a_snapshot(api: TestClient) -> None:
    define(api, "ra", "p1")
    assert act(api, "ra", "start", wait=True)["status"] == "success"
    # Its current state: frozen live by a snapshot that stays for the linked clone ...
    assert clone(api, "ra", name="rb")["status"] == "success"
    snaps = api.get(f"{API}/vms/ra/snapshots").json()["items"]
    assert [s["name"] for s in snaps] == ["clone-rb"]
    # ... and is merged back once a full copy is made.
    assert clone(api, "ra", name="rf", mode="full")["status"] == "success"
    snaps = api.get(f"{API}/vms/ra/snapshots").json()["items"]
    assert [s["name"] for s in snaps] == ["clone-rb"]
    assert api.get(f"{API}/vms/ra").json()["state"] == "running"
    taken = api.post(f"{API}/vms/ra/snapshots", json={"name": "s1"})
    assert wait_task(api, taken.json()["id"])["status"] == "success"
    assert clone(api, "ra", name="rc", snapshot="s1")["status"] == "success"
    assert act(api, "ra", "destroy")["status"] == "success"


def test_refusals(ctx: Any, api: TestClient) -> None:
    define(api, "xa", "p1")
    define(api, "xb", "p2")
    taken = api.post(f"{API}/vms/xa/clone", json={"name": "xb"})
    assert taken.status_code == 409 and "xb" in taken.json()["message"]
    bad = api.post(f"{API}/vms/xa/clone", json={"name": "Bad Name"})
    assert bad.status_code == 422 and bad.json()["field"] == "name"
    mode = api.post(f"{API}/vms/xa/clone", json={"name": "xc", "mode": "deep"})
    assert mode.status_code == 422 and mode.json()["field"] == "mode"
    nosnap = api.post(f"{API}/vms/xa/clone", json={"name": "xc", "snapshot": "nope"})
    assert nosnap.status_code == 404
    with user_client(ctx, "bob") as bob:
        hidden = bob.post(f"{API}/vms/xa/clone", json={"name": "xc"})
        assert hidden.status_code == 404
        into = bob.post(f"{API}/vms/xb/clone", json={"name": "xc", "project": "p1"})
        assert into.status_code == 404
    assert api.get(f"{API}/vms/xc").status_code == 404
    assert not (ctx.home.vm_dir("xc")).exists()


def test_a_clone_carries_the_vnc_password_and_starts(ctx: Any, api: TestClient) -> None:
    import stat

    define(api, "va", "p1", vnc=True)
    answer = api.post(f"{API}/vms/va/vnc/password", json={"password": "s3cret"})
    assert answer.status_code in (200, 201), answer.text
    assert clone(api, "va", name="vb", mode="full")["status"] == "success"
    copied = ctx.home.vm_dir("vb") / "vnc-password"
    assert copied.read_text() == "s3cret"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600
    assert act(api, "vb", "start", wait=True)["status"] == "success"
    assert api.get(f"{API}/vms/vb").json()["state"] == "running"
    assert act(api, "vb", "destroy")["status"] == "success"
