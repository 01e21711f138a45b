"""Floating IPs over the API and the CLI: allocate, list, associate, move, disassociate,
release; what is refused and why; who sees what.

The world: projects p1 and p2; alice operates p1, carol views p1, bob operates p2; the local
administrator on the UNIX socket. ``corral.toml`` says ``[network] host = false`` and a pool
of two addresses: floating IPs live in the database only here (tests/net/test_floating.py
has them on the kernel).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.access.audit import AuditFilter, list_entries
from corral.access.local import local_principal
from corral.access.principal import Principal
from corral.compute.addresses import allocate_port
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.networks import create_network
from corral.compute.settings import SETTINGS_FILE
from corral.store.models import NetworkRow, VmRow
from tests.api.support import admin_client, state_dir, user_client
from tests.integration.conftest import cli

API = "/api/v1"
FIPS = f"{API}/floating-ips"
SETTINGS = '[network]\nhost = false\nfloating_pool = "203.0.113.0/30"\n'


@dataclass
class World:
    ctx: Corral
    admin: Principal
    clients: dict[str, TestClient]


def _vm(ctx: Corral, name: str, project: str, network: str | None) -> None:
    create(ctx, CreateRequest(name=name, image="reference", memory="128M", project=project))
    if network is None:
        return
    with ctx.db.session() as session:
        vm = session.scalars(select(VmRow).where(VmRow.name == name)).one()
        net = session.scalars(select(NetworkRow).where(NetworkRow.name == network)).one()
        allocate_port(session, vm, "net0", net)
        session.commit()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = {
        "alice": ("operator", ["p1"]),
        "carol": ("viewer", ["p1"]),
        "bob": ("operator", ["p2"]),
    }
    with state_dir("fip-", ["p1", "p2"], users) as ctx:
        (ctx.home.root / SETTINGS_FILE).write_text(SETTINGS)
        admin = local_principal(ctx, os.geteuid())
        create_network(ctx, admin, "lan", "nat", subnet="10.77.0.0/24", project="p1")
        _vm(ctx, "web1", "p1", "lan")
        _vm(ctx, "web2", "p1", "lan")
        _vm(ctx, "plain", "p1", None)
        with admin_client(ctx) as local:
            clients = {"local": local}
            for user in users:
                clients[user] = user_client(ctx, user).__enter__()
            try:
                yield World(ctx, admin, clients)
            finally:
                for user in users:
                    clients[user].__exit__(None, None, None)


def _allocate(client: TestClient, project: str = "p1") -> str:
    made = client.post(FIPS, json={"project": project})
    assert made.status_code == 201, made.text
    return str(made.json()["address"])


def test_allocate_associate_move_disassociate_release(world: World) -> None:
    alice = world.clients["alice"]
    address = _allocate(alice)
    assert address == "203.0.113.1"
    done = alice.post(f"{FIPS}/{address}/associate", json={"vm": "web1"})
    assert done.status_code == 200, done.text
    assert (done.json()["vm"], done.json()["nic"], done.json()["guest"]) == (
        "web1",
        "net0",
        "10.77.0.2",
    )
    again = alice.post(f"{FIPS}/{address}/associate", json={"vm": "web2"})
    assert again.status_code == 409
    assert "associated with vm 'web1' NIC 'net0'" in again.json()["message"]

    assert alice.post(f"{FIPS}/{address}/disassociate").json()["vm"] is None
    moved = alice.post(f"{FIPS}/{address}/associate", json={"vm": "web2", "nic": "net0"})
    assert moved.json()["vm"] == "web2", moved.text
    listing = alice.get(FIPS).json()
    assert [(f["address"], f["vm"]) for f in listing] == [(address, "web2")]

    assert alice.delete(f"{FIPS}/{address}").status_code == 204
    assert alice.get(FIPS).json() == []
    actions = [
        (e.action, e.outcome)
        for e in list_entries(world.ctx, world.admin, AuditFilter(target_name=address))
    ]
    assert ("floating_ip.associate", "ok") in actions
    assert ("floating_ip.associate", "Conflict") in actions
    assert ("floating_ip.release", "ok") in actions


def test_the_pool_runs_out_cleanly(world: World) -> None:
    local = world.clients["local"]
    made = [_allocate(local), _allocate(local)]
    try:
        assert made == ["203.0.113.1", "203.0.113.2"]
        full = local.post(FIPS, json={"project": "p1"})
        assert full.status_code == 409 and "exhausted" in full.json()["message"]
    finally:
        for address in made:
            assert local.delete(f"{FIPS}/{address}").status_code == 204


def test_a_vm_without_a_managed_port_is_a_409(world: World) -> None:
    alice = world.clients["alice"]
    address = _allocate(alice)
    try:
        answer = alice.post(f"{FIPS}/{address}/associate", json={"vm": "plain"})
        assert answer.status_code == 409 and "no NIC on a managed network" in answer.text
        answer = alice.post(f"{FIPS}/{address}/associate", json={"vm": "web1", "nic": "net7"})
        assert answer.status_code == 409 and "no NIC 'net7'" in answer.text
    finally:
        alice.delete(f"{FIPS}/{address}")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"vm": "Web 1"}, "vm"), ({"vm": "web1", "nic": "NET0"}, "nic"), ({}, "vm")],
)
def test_bad_input_is_a_422_naming_the_field(
    world: World, body: dict[str, str], field: str
) -> None:
    answer = world.clients["alice"].post(f"{FIPS}/203.0.113.1/associate", json=body)
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text
    bad = world.clients["alice"].post(f"{FIPS}/not-an-ip/disassociate")
    assert bad.status_code == 404


def test_other_projects_see_nothing_and_viewers_change_nothing(world: World) -> None:
    alice, bob, carol = (world.clients[u] for u in ("alice", "bob", "carol"))
    address = _allocate(alice)
    try:
        assert bob.get(FIPS).json() == []
        assert bob.post(f"{FIPS}/{address}/disassociate").status_code == 404
        assert bob.delete(f"{FIPS}/{address}").status_code == 404
        assert bob.post(f"{FIPS}/{address}/associate", json={"vm": "web1"}).status_code == 404
        assert carol.get(FIPS).json()[0]["address"] == address
        assert carol.post(f"{FIPS}/{address}/associate", json={"vm": "web1"}).status_code == 403
        assert carol.post(FIPS, json={"project": "p1"}).status_code == 403
        # bob's own floating IP cannot reach alice's VM.
        own = _allocate(bob, "p2")
        try:
            foreign = bob.post(f"{FIPS}/{own}/associate", json={"vm": "web1"})
            assert foreign.status_code == 404
        finally:
            bob.delete(f"{FIPS}/{own}")
    finally:
        alice.delete(f"{FIPS}/{address}")


def test_the_cli(world: World) -> None:
    home = world.ctx.home.root
    allocated = cli(home, "fip", "allocate", "--project", "p1")
    assert allocated.returncode == 0, allocated.stderr
    address = allocated.stdout.strip()
    assert address == "203.0.113.1"
    done = cli(home, "fip", "associate", address, "web1", "--nic", "net0")
    assert done.returncode == 0 and "vm web1 net0 (10.77.0.2)" in done.stdout, done.stderr
    listed = json.loads(cli(home, "fip", "list", "--json").stdout)
    assert [(f["address"], f["vm"]) for f in listed] == [(address, "web1")]
    busy = cli(home, "fip", "associate", address, "web2")
    assert busy.returncode != 0 and "associated with vm 'web1'" in busy.stderr
    assert cli(home, "fip", "disassociate", address).returncode == 0
    assert cli(home, "fip", "release", address).returncode == 0
    assert json.loads(cli(home, "fip", "list", "--json").stdout) == []
