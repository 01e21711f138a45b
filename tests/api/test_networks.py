"""Virtual networks over the API: create, list, show and delete; what is refused and why;
the ports address management hands out.

The world: projects p1 and p2; alice operates p1, carol views p1, bob operates p2; the local
administrator on the UNIX socket. ``corral.toml`` says ``[network] host = false``: networks
live in the database only, and these tests never touch the host's networking.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.access.audit import AuditFilter, list_entries
from corral.access.local import local_principal
from corral.access.principal import Principal
from corral.compute.addresses import allocate_port, release_ports
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.network_host import host_enabled
from corral.compute.networks import create_network
from corral.compute.settings import SETTINGS_FILE
from corral.errors import Conflict, InvalidInput
from corral.store.models import NetworkRow, PortRow, VmRow
from tests import daemons
from tests.api.support import admin_client, state_dir, user_client
from tests.integration.conftest import cli

API = "/api/v1"
STATE_PREFIX = "net-"


@dataclass
class World:
    ctx: Corral
    admin: Principal
    clients: dict[str, TestClient]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = {
        "alice": ("operator", ["p1"]),
        "carol": ("viewer", ["p1"]),
        "bob": ("operator", ["p2"]),
    }
    with state_dir(STATE_PREFIX, ["p1", "p2"], users) as ctx:
        (ctx.home.root / SETTINGS_FILE).write_text("[network]\nhost = false\n")
        with admin_client(ctx) as local:
            clients = {"local": local}
            for user in users:
                clients[user] = user_client(ctx, user).__enter__()
            try:
                yield World(ctx, local_principal(ctx, os.geteuid()), clients)
            finally:
                for user in users:
                    clients[user].__exit__(None, None, None)


def _create(client: TestClient, name: str, **fields: Any) -> Any:
    return client.post(f"{API}/networks", json={"name": name, **fields})


def _vm(world: World, name: str, project: str = "p1") -> VmRow:
    with world.ctx.db.session() as session:
        found = session.scalars(select(VmRow).where(VmRow.name == name)).first()
    if found is None:
        create(
            world.ctx, CreateRequest(name=name, image="reference", memory="128M", project=project)
        )
        with world.ctx.db.session() as session:
            found = session.scalars(select(VmRow).where(VmRow.name == name)).one()
    return found


def _network(world: World, name: str) -> NetworkRow:
    with world.ctx.db.session() as session:
        return session.scalars(select(NetworkRow).where(NetworkRow.name == name)).one()


def test_the_host_is_left_alone_here(world: World) -> None:
    assert not host_enabled(world.ctx)


def test_create_list_get_delete(world: World) -> None:
    alice = world.clients["alice"]
    made = _create(alice, "lan", kind="nat", subnet="10.77.0.0/24", project="p1")
    assert made.status_code == 201, made.text
    assert made.headers["location"] == f"{API}/networks/lan"
    body = made.json()
    assert body["gateway"] == "10.77.0.1" and body["bridge"] == "crb-lan"
    assert (body["project"], body["kind"], body["used"], body["free"]) == ("p1", "nat", 0, 253)

    listing = alice.get(f"{API}/networks").json()
    assert [n["name"] for n in listing["items"]] == ["lan"] and listing["total"] == 1
    assert alice.get(f"{API}/networks", params={"kind": "isolated"}).json()["total"] == 0
    assert alice.get(f"{API}/networks", params={"name": "la"}).json()["total"] == 1

    shown = alice.get(f"{API}/networks/lan").json()
    assert shown["subnet"] == "10.77.0.0/24" and shown["ports"] == []

    assert alice.delete(f"{API}/networks/lan").status_code == 204
    assert alice.get(f"{API}/networks/lan").status_code == 404

    actions = [
        (e.action, e.outcome)
        for e in list_entries(world.ctx, world.admin, AuditFilter(target_name="lan"))
    ]
    assert ("network.create", "ok") in actions and ("network.delete", "ok") in actions


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subnet": "10.77.0/24x"}, "subnet"),
        ({"subnet": "10.77.0.0/30"}, "subnet"),
        ({"subnet": "10.0.0.0/8"}, "subnet"),
        ({"subnet": "8.8.8.0/24"}, "subnet"),
        ({"subnet": "10.77.0.0/24", "gateway": "10.66.0.1"}, "gateway"),
        ({"kind": "bridged"}, "bridge"),
        ({"subnet": "10.77.0.0/24", "vlan": 5000}, "vlan"),
        ({"subnet": "10.77.0.0/24", "uplink": "eth0;reboot"}, "uplink"),
        ({"subnet": "10.77.0.0/24", "kind": "vxlan"}, "kind"),
        ({"subnet": "10.77.0.0/24", "name": "a-name-too-long"}, "name"),
        ({"subnet": "10.77.0.0/24", "dhcp": True}, "dhcp"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    world: World, fields: dict[str, Any], field: str
) -> None:
    name = fields.pop("name", "bad")
    answer = _create(world.clients["local"], name, **fields)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field, answer.json()
    assert world.clients["local"].get(f"{API}/networks/{name}").status_code in (404, 422)


def test_overlaps_and_taken_names_are_409s(world: World) -> None:
    local = world.clients["local"]
    assert _create(local, "dmz", subnet="10.90.0.0/16", project="p2").status_code == 201
    try:
        overlap = _create(local, "web", subnet="10.90.4.0/24")
        assert overlap.status_code == 409
        assert "overlaps network 'dmz' (10.90.0.0/16)" in overlap.json()["message"]
        taken = _create(local, "dmz", subnet="10.91.0.0/24")
        assert taken.status_code == 409 and "already exists" in taken.json()["message"]
    finally:
        assert local.delete(f"{API}/networks/dmz").status_code == 204
    entries = list_entries(world.ctx, world.admin, AuditFilter(action="network.create"))
    assert any(e.target_name == "web" and e.outcome == "Conflict" for e in entries)


def test_another_projects_network_does_not_exist(world: World) -> None:
    alice, bob = world.clients["alice"], world.clients["bob"]
    assert _create(bob, "bobnet", subnet="10.60.0.0/24", project="p2").status_code == 201
    try:
        assert alice.get(f"{API}/networks/bobnet").status_code == 404
        assert alice.delete(f"{API}/networks/bobnet").status_code == 404
        assert "bobnet" not in alice.get(f"{API}/networks").text
        assert alice.get(f"{API}/networks", params={"project": "p2"}).status_code == 404
        assert _create(alice, "x", subnet="10.61.0.0/24", project="p2").status_code == 404
    finally:
        assert bob.delete(f"{API}/networks/bobnet").status_code == 204


def test_roles(world: World) -> None:
    alice, carol, local = world.clients["alice"], world.clients["carol"], world.clients["local"]
    bridged = _create(alice, "phys", kind="bridged", bridge="br0", project="p1")
    assert bridged.status_code == 403 and "admins only" in bridged.json()["message"]
    assert _create(carol, "view", subnet="10.62.0.0/24", project="p1").status_code == 403
    made = _create(local, "phys", kind="bridged", bridge="br0", vlan=12, project="p1")
    assert made.status_code == 201, made.text
    assert (made.json()["bridge"], made.json()["vlan"], made.json()["free"]) == ("br0", 12, None)
    assert carol.get(f"{API}/networks/phys").status_code == 200
    assert carol.delete(f"{API}/networks/phys").status_code == 403
    assert alice.delete(f"{API}/networks/phys").status_code == 204


def test_a_per_user_corral_offers_user_mode_networking_only(world: World) -> None:
    with pytest.raises(Conflict) as refused:
        create_network(world.ctx, world.admin, "mine", subnet="10.63.0.0/24", uid=1000)
    assert "need corrald running as root" in refused.value.message
    assert "runs as uid 1000 and offers user-mode networking only" in refused.value.message
    assert world.clients["local"].get(f"{API}/networks/mine").status_code == 404


def test_ports_exhaust_a_29_release_and_reuse(world: World) -> None:
    local = world.clients["local"]
    assert _create(local, "tiny", subnet="10.70.0.0/29", project="p1").status_code == 201
    vm, other = _vm(world, "web"), _vm(world, "db")
    network = _network(world, "tiny")
    with world.ctx.db.session() as session:
        ports = [allocate_port(session, vm, f"net{i}", network) for i in range(4)]
        ports.append(allocate_port(session, other, "net0", network))
        with pytest.raises(Conflict, match="no free address"):
            allocate_port(session, other, "net1", network)
    addresses = [p.address for p in ports]
    assert addresses == [f"10.70.0.{i}" for i in range(2, 7)]
    assert len({p.mac for p in ports}) == 5

    shown = local.get(f"{API}/networks/tiny").json()
    assert (shown["used"], shown["free"]) == (5, 0)
    assert {(p["vm"], p["address"]) for p in shown["ports"]} >= {("db", "10.70.0.6")}

    in_use = local.delete(f"{API}/networks/tiny")
    assert in_use.status_code == 409
    assert "in use by vm db, vm web" in in_use.json()["message"]

    with world.ctx.db.session() as session:
        assert release_ports(session, other) == 1
    with world.ctx.db.session() as session:
        again = allocate_port(session, other, "net0", network, ip="10.70.0.6")
        assert again.address == "10.70.0.6"
        with pytest.raises(InvalidInput) as bad:
            allocate_port(session, other, "net1", network, mac="53:54:00:00:00:01")
        assert bad.value.field == "mac"
    with world.ctx.db.session() as session, pytest.raises(Conflict, match="is taken"):
        allocate_port(session, other, "net1", network, mac=ports[0].mac)
    with world.ctx.db.session() as session:
        with pytest.raises(InvalidInput) as bad:
            allocate_port(session, other, "net1", network, ip="10.70.0.1")
        assert bad.value.field == "ip"

    with world.ctx.db.session() as session:
        assert release_ports(session, vm) == 4 and release_ports(session, other) == 1
    with world.ctx.db.session() as session:
        assert session.scalars(select(PortRow)).first() is None
    assert local.delete(f"{API}/networks/tiny").status_code == 204


def test_a_bridged_network_has_no_addresses(world: World) -> None:
    local = world.clients["local"]
    assert _create(local, "br", kind="bridged", bridge="br1", project="p1").status_code == 201
    vm = _vm(world, "web")
    network = _network(world, "br")
    with world.ctx.db.session() as session:
        port = allocate_port(session, vm, "net0", network)
        assert port.address is None
        with pytest.raises(InvalidInput) as bad:
            allocate_port(session, vm, "net1", network, ip="10.1.0.2")
        assert bad.value.field == "ip"
    with world.ctx.db.session() as session:
        release_ports(session, vm)
    assert local.delete(f"{API}/networks/br").status_code == 204


def test_the_cli_creates_lists_shows_and_deletes() -> None:
    home = Path(tempfile.mkdtemp(prefix="netcli-", dir="/tmp"))
    try:
        (home / SETTINGS_FILE).write_text("[network]\nhost = false\n")
        made = cli(home, "net", "create", "lan", "--type", "nat", "--subnet", "10.77.0.0/24")
        assert made.returncode == 0, made.stderr
        assert "network lan created in project default (nat, 10.77.0.0/24, gateway 10.77.0.1)" in (
            made.stdout
        )
        listed = cli(home, "net", "list")
        assert listed.returncode == 0 and "lan" in listed.stdout and "crb-lan" in listed.stdout
        as_json = json.loads(cli(home, "net", "list", "--json").stdout)
        assert [(n["name"], n["free"]) for n in as_json] == [("lan", 253)]
        info = cli(home, "net", "info", "lan")
        assert info.returncode == 0 and "10.77.0.1" in info.stdout, info.stdout
        assert json.loads(cli(home, "net", "info", "lan", "--json").stdout)["bridge"] == "crb-lan"

        overlap = cli(home, "net", "create", "dmz", "--subnet", "10.77.0.0/16")
        assert overlap.returncode != 0 and "overlaps network 'lan'" in overlap.stderr
        bad = cli(home, "net", "create", "dmz", "--subnet", "10.78.0.0/24", "--vlan", "5000")
        assert bad.returncode != 0 and "vlan" in bad.stderr

        gone = cli(home, "net", "delete", "lan")
        assert gone.returncode == 0 and "network lan deleted" in gone.stdout
        missing = cli(home, "net", "info", "lan")
        assert missing.returncode != 0 and "network 'lan' not found" in missing.stderr
    finally:
        daemons.stop(home)
        shutil.rmtree(home, ignore_errors=True)
