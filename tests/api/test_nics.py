"""A VM's NICs over the API on VMs that are not running: add, list, link, remove; the port
(MAC, address) each NIC on a network has; what is refused and why; the audit log.

The world: projects p1 and p2; alice operates p1, carol views p1, bob operates p2; the local
administrator on the UNIX socket. ``corral.toml`` says ``[network] host = false``: networks
and ports live in the database only, and these tests never touch the host's networking.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.nics import (
    MAX_NICS,
    check_hotplug,
    check_model,
    free_name,
    plan_add,
    plan_link,
    plan_remove,
)
from corral.compute.settings import SETTINGS_FILE
from corral.errors import Conflict, InvalidInput, NotFound
from corral.net.plan import nic_tap
from corral.qemu.process import start_ticks
from corral.spec.vm import NicSpec, VmSpec
from corral.store.models import PortRow, VmRow
from tests import daemons
from tests.api.support import API, admin_client, audit_entries, state_dir, user_client
from tests.integration.conftest import cli


@dataclass
class World:
    ctx: Corral
    local: TestClient
    alice: TestClient
    carol: TestClient
    bob: TestClient


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = {
        "alice": ("operator", ["p1"]),
        "carol": ("viewer", ["p1"]),
        "bob": ("operator", ["p2"]),
    }
    with state_dir("nic-", ["p1", "p2"], users) as ctx:
        (ctx.home.root / SETTINGS_FILE).write_text("[network]\nhost = false\n")
        create(ctx, CreateRequest(name="n1", image="reference", memory="128M", project="p1"))
        with (
            admin_client(ctx) as local,
            user_client(ctx, "alice") as alice,
            user_client(ctx, "carol") as carol,
            user_client(ctx, "bob") as bob,
        ):
            for name, subnet, project in (
                ("lan", "10.77.0.0/24", "p1"),
                ("tiny", "10.78.0.0/29", "p1"),
                ("bobnet", "10.79.0.0/24", "p2"),
            ):
                made = local.post(
                    f"{API}/networks", json={"name": name, "subnet": subnet, "project": project}
                )
                assert made.status_code == 201, made.text
            yield World(ctx, local, alice, carol, bob)


def _spec(ctx: Corral, name: str) -> VmSpec:
    with ctx.db.session() as session:
        row = session.scalars(select(VmRow).where(VmRow.name == name)).one()
        return VmSpec.model_validate_json(row.spec)


def _ports(ctx: Corral, name: str) -> dict[str, tuple[str, str | None]]:
    with ctx.db.session() as session:
        rows = session.execute(
            select(PortRow.nic, PortRow.mac, PortRow.address)
            .join(VmRow, VmRow.id == PortRow.vm_id)
            .where(VmRow.name == name)
        )
        return {nic: (mac, address) for nic, mac, address in rows}


def _nics(client: TestClient, vm: str) -> list[dict[str, object]]:
    answer = client.get(f"{API}/vms/{vm}/nics")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


# -- pure rules -------------------------------------------------------------------------------


def _bare_spec() -> VmSpec:
    return VmSpec.model_validate(
        {
            "name": "p",
            "uuid": str(uuid.uuid4()),
            "memory": 128,
            "nics": [{"name": "net0"}],
            "boot": {"kind": "kernel", "kernel": "/k"},
        }
    )


def test_plans_add_link_and_remove_a_nic() -> None:
    spec = _bare_spec()
    assert free_name(spec) == "net1"
    nic = NicSpec(name="net1", kind="network", network="lan", mac="52:54:00:aa:bb:cc")
    added = plan_add(spec, nic)
    assert [n.name for n in added.nics] == ["net0", "net1"] and added.nic_mac(1) == nic.mac
    with pytest.raises(Conflict, match="has a NIC 'net1' already"):
        plan_add(added, nic)
    down = plan_link(added, "net1", False)
    assert [n.link for n in down.nics] == [True, False]
    assert plan_remove(down, "net1").nics == spec.nics
    with pytest.raises(NotFound):
        plan_remove(spec, "net7")
    full = spec
    for index in range(1, MAX_NICS):
        full = plan_add(full, NicSpec(name=f"net{index}", kind="network", network="lan"))
    with pytest.raises(Conflict, match="the most a VM has"):
        plan_add(full, NicSpec(name="net99", kind="network", network="lan"))
    with pytest.raises(InvalidInput) as bad:
        check_model("rtl8139")
    assert bad.value.field == "model"
    check_hotplug("p", "add a NIC to", "pc-i440fx-7.2")
    with pytest.raises(Conflict, match="machine 'q35' takes no hot-plugged network card"):
        check_hotplug("p", "add a NIC to", "q35")


# -- the API ----------------------------------------------------------------------------------


def test_add_list_link_remove_on_a_stopped_vm(world: World) -> None:
    before = _nics(world.alice, "n1")
    added = world.alice.post(f"{API}/vms/n1/nics", json={"network": "lan"})
    assert added.status_code == 201, added.text
    nic = added.json()
    spec = _spec(world.ctx, "n1")
    assert nic["name"] == "net1" and nic["network"] == "lan" and nic["kind"] == "network"
    assert nic["address"] == "10.77.0.2" and nic["mac"].startswith("52:54:00:")
    assert nic["tap"] == nic_tap(spec.uuid, "net1") and nic["link"] is True
    assert spec.nics[-1].mac == nic["mac"] and spec.nics[-1].network == "lan"
    assert _ports(world.ctx, "n1") == {"net1": (nic["mac"], "10.77.0.2")}
    assert _nics(world.alice, "n1") == [*before, nic]
    shown = world.local.get(f"{API}/networks/lan").json()["ports"]
    assert [(p["vm"], p["nic"], p["address"]) for p in shown] == [("n1", "net1", "10.77.0.2")]

    fixed = world.alice.post(
        f"{API}/vms/n1/nics", json={"network": "lan", "ip": "10.77.0.40", "model": "e1000"}
    )
    assert fixed.status_code == 201, fixed.text
    assert fixed.json()["address"] == "10.77.0.40" and fixed.json()["model"] == "e1000"
    assert str(_spec(world.ctx, "n1").nics[-1].ip) == "10.77.0.40"

    down = world.alice.patch(f"{API}/vms/n1/nics/net1", json={"link": False})
    assert down.status_code == 200 and down.json()["link"] is False
    assert [n.link for n in _spec(world.ctx, "n1").nics if n.name == "net1"] == [False]

    for name in ("net1", "net2"):
        gone = world.alice.delete(f"{API}/vms/n1/nics/{name}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["name"] == name
    assert _nics(world.alice, "n1") == before
    assert _ports(world.ctx, "n1") == {}
    again = world.alice.post(f"{API}/vms/n1/nics", json={"network": "lan"})
    assert again.json()["address"] == "10.77.0.2"  # the address was free again
    assert world.alice.delete(f"{API}/vms/n1/nics/net1").status_code == 200

    actions = [(e["action"], e["outcome"]) for e in audit_entries(world.local, "n1")]
    for action in ("vm.nic.add", "vm.nic.link", "vm.nic.remove"):
        assert (action, "ok") in actions
    add = next(e for e in audit_entries(world.local, "n1") if e["action"] == "vm.nic.add")
    assert add["project"] == "p1" and add["detail"]["network"] == "lan"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"network": "lan", "model": "rtl8139"}, "model"),
        ({"network": "lan", "ip": "10.78.0.9"}, "ip"),
        ({"network": "lan", "ip": "not-an-ip"}, "ip"),
        ({"network": "Bad Name"}, "network"),
        ({"network": "lan", "colour": "red"}, "colour"),
        ({}, "network"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    world: World, body: dict[str, object], field: str
) -> None:
    answer = world.alice.post(f"{API}/vms/n1/nics", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"].split(".")[-1] == field
    assert _ports(world.ctx, "n1") == {}


def test_other_refusals(world: World) -> None:
    link = world.alice.patch(f"{API}/vms/n1/nics/net0", json={"link": "sideways"})
    assert link.status_code == 422 and link.json()["field"].endswith("link")
    slow = world.alice.delete(f"{API}/vms/n1/nics/net0", params={"timeout": 0})
    assert slow.status_code == 422 and slow.json()["field"] == "timeout"
    missing = world.alice.delete(f"{API}/vms/n1/nics/net9")
    assert missing.status_code == 404 and "net9" in missing.json()["message"]
    # tiny is a /29: gateway and 5 guests.
    made = [world.alice.post(f"{API}/vms/n1/nics", json={"network": "tiny"}) for _ in range(5)]
    assert [m.status_code for m in made] == [201] * 5
    full = world.alice.post(f"{API}/vms/n1/nics", json={"network": "tiny"})
    assert full.status_code == 409, full.text
    taken = world.alice.post(
        f"{API}/vms/n1/nics", json={"network": "tiny", "ip": made[0].json()["address"]}
    )
    assert taken.status_code == 409
    for m in made:
        assert world.alice.delete(f"{API}/vms/n1/nics/{m.json()['name']}").status_code == 200
    assert _ports(world.ctx, "n1") == {}


def test_another_projects_objects_do_not_exist(world: World) -> None:
    for answer in (
        world.bob.get(f"{API}/vms/n1/nics"),
        world.bob.post(f"{API}/vms/n1/nics", json={"network": "bobnet"}),
        world.bob.patch(f"{API}/vms/n1/nics/net0", json={"link": False}),
        world.bob.delete(f"{API}/vms/n1/nics/net0"),
    ):
        assert answer.status_code == 404 and answer.json()["message"] == "vm 'n1' not found"
    foreign = world.alice.post(f"{API}/vms/n1/nics", json={"network": "bobnet"})
    assert foreign.status_code == 404 and "bobnet" in foreign.json()["message"]
    viewer = world.carol.post(f"{API}/vms/n1/nics", json={"network": "lan"})
    assert viewer.status_code == 403
    assert world.carol.get(f"{API}/vms/n1/nics").status_code == 200
    assert _ports(world.ctx, "n1") == {}
    outcomes = {e["outcome"] for e in audit_entries(world.local, "n1")}
    assert {"NotFound", "Forbidden"} <= outcomes


def test_a_vm_between_states_is_a_409_naming_the_state(world: World) -> None:
    me = os.getpid()
    with world.ctx.db.session() as session:
        session.execute(
            update(VmRow)
            .where(VmRow.name == "n1")
            .values(state="stopping", pid=me, pid_start=start_ticks(me))
        )
    try:
        for answer in (
            world.alice.post(f"{API}/vms/n1/nics", json={"network": "lan"}),
            world.alice.patch(f"{API}/vms/n1/nics/net0", json={"link": False}),
            world.alice.delete(f"{API}/vms/n1/nics/net0"),
        ):
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"] == "StateError"
            assert "it is stopping" in answer.json()["message"]
    finally:
        with world.ctx.db.session() as session:
            session.execute(
                update(VmRow)
                .where(VmRow.name == "n1")
                .values(state="shutoff", pid=None, pid_start=None)
            )
    assert _ports(world.ctx, "n1") == {}
    assert _spec(world.ctx, "n1").nics[0].link is True


def test_the_cli_adds_lists_links_and_removes() -> None:
    with state_dir("niccli-") as ctx:
        home = ctx.home.root
        try:
            _cli_session(home)
        finally:
            daemons.stop(home)


def _cli_session(home: Path) -> None:
    """``corral nic`` against ``home``'s daemon, with the host left alone."""
    (home / SETTINGS_FILE).write_text("[network]\nhost = false\n")
    assert cli(home, "net", "create", "lan", "--subnet", "10.77.0.0/24").returncode == 0
    defined = cli(home, "create", "c1", "--image", "reference", "--memory", "128M")
    assert defined.returncode == 0, defined.stderr
    added = cli(home, "nic", "add", "c1", "--net", "lan", "--ip", "10.77.0.9")
    assert added.returncode == 0, added.stderr
    assert "c1: net1 added on lan" in added.stdout and "10.77.0.9" in added.stdout
    listed = cli(home, "nic", "list", "c1")
    assert listed.returncode == 0 and "10.77.0.9" in listed.stdout and "up" in listed.stdout
    down = cli(home, "nic", "link", "c1", "net1", "down")
    assert down.returncode == 0 and "net1 link down" in down.stdout, down.stderr
    as_json = json.loads(cli(home, "nic", "list", "c1", "--json").stdout)
    assert [(n["name"], n["link"]) for n in as_json][-1] == ("net1", False)
    bad = cli(home, "nic", "add", "c1", "--net", "lan", "--model", "rtl8139")
    assert bad.returncode != 0 and "model" in bad.stderr
    gone = cli(home, "nic", "remove", "c1", "net1")
    assert gone.returncode == 0 and "net1 removed" in gone.stdout
    assert "net1" not in cli(home, "nic", "list", "c1").stdout
