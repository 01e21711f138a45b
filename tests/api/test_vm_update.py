"""``PATCH /vms/{name}``: a VM's vCPUs, memory and forwards change while it does not run
(409 naming its state while it does), growth within the project's quota (403 naming it),
bad values 422 naming the field, another project's VM 404; every attempt is audited; and
the next start runs QEMU with what was set.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.access.local import local_principal
from corral.access.quotas import set_quota
from corral.compute import lifecycle, update
from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.qemu.monitor import Monitor
from tests.api.support import API, admin_client, audit_entries, state_dir, user_client

MIB = 1 << 20


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    """A state directory with the reference image, projects p1 and p2, the operator alice
    and the viewer vic (members of p1)."""
    users = {"alice": ("operator", ["p1"]), "vic": ("viewer", ["p1"])}
    with state_dir("vu-", ["p1", "p2"], users) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


_user = user_client
audit = audit_entries


def define(client: TestClient, name: str, **body: Any) -> dict[str, Any]:
    answer = client.post(
        f"{API}/vms", json={"name": name, "image": "reference", "memory": "128M", **body}
    )
    assert answer.status_code == 201, answer.text
    vm: dict[str, Any] = answer.json()
    return vm


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_update_changes_what_was_asked_and_keeps_the_rest(api: TestClient) -> None:
    port = free_port()
    define(api, "u-one", forwards=[f"{port}:22"])
    answer = api.patch(f"{API}/vms/u-one", json={"vcpus": 2, "memory": "192M"})
    assert answer.status_code == 200, answer.text
    vm = answer.json()
    assert (vm["vcpus"], vm["memory"]) == (2, 192 * MIB)
    assert vm["forwards"] == [f"tcp:127.0.0.1:{port}->22"]  # left out: kept
    assert api.get(f"{API}/vms/u-one").json() == vm
    other = free_port()
    moved = api.patch(f"{API}/vms/u-one", json={"forwards": [f"{other}:22", "udp:5353:53"]})
    assert moved.status_code == 200, moved.text
    assert moved.json()["forwards"] == [
        f"tcp:127.0.0.1:{other}->22",
        "udp:127.0.0.1:5353->53",
    ]
    assert moved.json()["vcpus"] == 2
    cleared = api.patch(f"{API}/vms/u-one", json={"forwards": []})
    assert cleared.json()["forwards"] == [] and cleared.json()["ssh"] is None
    same = api.patch(f"{API}/vms/u-one", json={})
    assert same.status_code == 200 and same.json() == cleared.json()

    entries = [e for e in audit(api, "u-one") if e["action"] == "vm.update"]
    assert [e["outcome"] for e in entries] == ["ok", "ok", "ok", "ok"]
    assert entries[0]["detail"]["changes"] == {"vcpus": [1, 2], "memory": [128 * MIB, 192 * MIB]}
    assert entries[0]["project"] == "default" and entries[0]["actor"].startswith("local:")
    assert entries[3]["detail"]["changes"] == {}


def test_bad_values_are_422_naming_the_field(api: TestClient) -> None:
    define(api, "u-bad")
    taken = free_port()
    define(api, "u-holder", forwards=[f"{taken}:22"])
    cases = [
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": "many"}, "vcpus"),
        ({"memory": "lots"}, "memory"),
        ({"memory": "4K"}, "memory"),
        ({"memory": "1T"}, "memory"),  # more than the host has
        ({"forwards": ["nope"]}, "forwards.0"),
        ({"forwards": ["2222:22", "2222:23"]}, "forwards"),
        ({"forwards": [f"{taken}:22"]}, "forwards"),  # another VM's host port
        ({"colour": "red"}, "colour"),
        ({"forwards": "2222:22"}, "forwards"),
    ]
    for body, field in cases:
        answer = api.patch(f"{API}/vms/u-bad", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"] == "InvalidInput"
        assert answer.json()["field"] == field, (body, answer.json())
    vm = api.get(f"{API}/vms/u-bad").json()
    assert (vm["vcpus"], vm["memory"], vm["forwards"]) == (1, 128 * MIB, [])
    missing = api.patch(f"{API}/vms/no-such-vm", json={"vcpus": 2})
    assert missing.status_code == 404 and missing.json()["message"] == "vm 'no-such-vm' not found"
    refused = [e["outcome"] for e in audit(api, "u-bad") if e["action"] == "vm.update"]
    assert refused == ["InvalidInput"] * 6  # the other four the schema refused up front
    assert audit(api, "no-such-vm")[-1]["outcome"] == "NotFound"


def test_growth_is_refused_past_the_quota_and_shrinking_never_is(
    ctx: Corral, api: TestClient
) -> None:
    admin = local_principal(ctx, os.geteuid())
    define(api, "u-q1", project="p2")
    define(api, "u-q2", project="p2")
    set_quota(ctx, admin, "p2", {"vcpus": 3, "memory": 384 * MIB})
    over = api.patch(f"{API}/vms/u-q1", json={"vcpus": 3})
    assert over.status_code == 403
    assert over.json()["error"] == "QuotaExceeded"
    assert "quota vcpus of project 'p2' exceeded" in over.json()["message"]
    assert "2 vCPUs in use + 2 vCPUs asked for" in over.json()["message"]
    memory = api.patch(f"{API}/vms/u-q1", json={"memory": "257M"})
    assert memory.status_code == 403 and "quota memory" in memory.json()["message"]
    assert api.patch(f"{API}/vms/u-q1", json={"vcpus": 2}).status_code == 200
    assert api.patch(f"{API}/vms/u-q1", json={"memory": "256M"}).status_code == 200
    # Lowered below the usage: giving back is still accepted, growing is not.
    set_quota(ctx, admin, "p2", {"vcpus": 1})
    assert api.patch(f"{API}/vms/u-q1", json={"vcpus": 1}).status_code == 200
    assert api.patch(f"{API}/vms/u-q2", json={"vcpus": 2}).status_code == 403
    outcomes = [e["outcome"] for e in audit(api, "u-q1") if e["action"] == "vm.update"]
    assert outcomes == ["QuotaExceeded", "QuotaExceeded", "ok", "ok", "ok"]
    set_quota(ctx, admin, "p2", {"vcpus": None, "memory": None})


def test_two_concurrent_growths_never_both_pass_the_quota(ctx: Corral, api: TestClient) -> None:
    admin = local_principal(ctx, os.geteuid())
    define(api, "u-r1", project="p1")
    define(api, "u-r2", project="p1")
    set_quota(ctx, admin, "p1", {"vcpus": 3})  # 2 in use: room for one more
    barrier = threading.Barrier(2, timeout=30)
    answers: dict[str, int] = {}

    def grow(name: str) -> None:
        barrier.wait()
        answers[name] = api.patch(f"{API}/vms/{name}", json={"vcpus": 2}).status_code

    threads = [threading.Thread(target=grow, args=(n,)) for n in ("u-r1", "u-r2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(answers.values()) == [200, 403], answers
        vcpus = [api.get(f"{API}/vms/{n}").json()["vcpus"] for n in ("u-r1", "u-r2")]
        assert sorted(vcpus) == [1, 2]
    finally:
        set_quota(ctx, admin, "p1", {"vcpus": None})


def test_another_projects_vm_is_404_and_a_viewer_is_403(ctx: Corral, api: TestClient) -> None:
    define(api, "u-mine", project="p1")
    define(api, "u-theirs", project="p2")
    with _user(ctx, "alice") as alice, _user(ctx, "vic") as vic:
        hidden = alice.patch(f"{API}/vms/u-theirs", json={"vcpus": 2})
        assert hidden.status_code == 404 and hidden.json()["message"] == "vm 'u-theirs' not found"
        assert alice.patch(f"{API}/vms/u-mine", json={"vcpus": 2}).json()["vcpus"] == 2
        viewer = vic.patch(f"{API}/vms/u-mine", json={"vcpus": 1})
        assert viewer.status_code == 403 and viewer.json()["error"] == "Forbidden"
    assert api.get(f"{API}/vms/u-theirs").json()["vcpus"] == 1
    assert api.get(f"{API}/vms/u-mine").json()["vcpus"] == 2
    theirs = audit(api, "u-theirs")[-1]
    assert (theirs["actor"], theirs["outcome"], theirs["project"]) == ("alice", "NotFound", "p2")
    mine = [(e["actor"], e["outcome"]) for e in audit(api, "u-mine") if e["action"] == "vm.update"]
    assert mine == [("alice", "ok"), ("vic", "Forbidden")]


def test_a_vm_held_by_another_operation_is_busy(
    ctx: Corral, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    define(api, "u-busy")
    monkeypatch.setattr(update, "LOCK_WAIT", 0.3)
    lock = ObjectLock(ctx.home.locks, "vm", "u-busy")
    lock.acquire()
    try:
        busy = api.patch(f"{API}/vms/u-busy", json={"vcpus": 2})
    finally:
        lock.release()
    assert busy.status_code == 409 and busy.json()["error"] == "Busy"
    assert api.patch(f"{API}/vms/u-busy", json={"vcpus": 2}).status_code == 200


@pytest.mark.tcg
def test_refused_while_running_and_the_next_start_uses_the_change(
    ctx: Corral, api: TestClient
) -> None:
    define(api, "u-run")
    lifecycle.start(ctx, "u-run")
    try:
        running = api.patch(f"{API}/vms/u-run", json={"vcpus": 2})
        assert running.status_code == 409
        assert running.json()["error"] == "StateError"
        assert running.json()["message"] == (
            "cannot update vm 'u-run': it is running; update needs defined, shutoff, crashed"
        )
        # What it already has is no change, in any state.
        assert api.patch(f"{API}/vms/u-run", json={"vcpus": 1}).status_code == 200
    finally:
        lifecycle.destroy(ctx, "u-run")
    changed = api.patch(f"{API}/vms/u-run", json={"vcpus": 2, "memory": "160M"})
    assert changed.status_code == 200, changed.text
    lifecycle.start(ctx, "u-run")
    try:
        with Monitor(str(ctx.home.vm_dir("u-run") / "qmp.sock")) as mon:
            assert len(mon.execute("query-cpus-fast")) == 2
            assert mon.execute("query-memory-size-summary")["base-memory"] == 160 * MIB
    finally:
        lifecycle.destroy(ctx, "u-run")
    outcomes = [e["outcome"] for e in audit(api, "u-run") if e["action"] == "vm.update"]
    assert outcomes == ["StateError", "ok", "ok"]
