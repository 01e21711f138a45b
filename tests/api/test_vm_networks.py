"""VMs with NICs on virtual networks, over the API: a port per network NIC made with the VM
(its MAC written into the spec), refusals that leave nothing, ports gone with the VM.

The world: projects p1 and p2; alice operates p1, bob operates p2. ``[network] host = false``:
the networks live in the database only; the host side is tested in
``tests/integration/test_networks_guests.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.settings import SETTINGS_FILE
from corral.store.models import PortRow, VmRow
from tests.api.support import admin_client, state_dir, user_client, wait_task

API = "/api/v1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="virtual networks need root")


@dataclass
class World:
    ctx: Corral
    clients: dict[str, TestClient]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = {"alice": ("operator", ["p1"]), "bob": ("operator", ["p2"])}
    with state_dir("vmn-", ["p1", "p2"], users) as ctx:
        (ctx.home.root / SETTINGS_FILE).write_text("[network]\nhost = false\n")
        with admin_client(ctx) as local:
            clients = {"local": local}
            for user in users:
                clients[user] = user_client(ctx, user).__enter__()
            try:
                for user, (name, subnet) in {
                    "alice": ("lan", "10.77.0.0/24"),
                    "bob": ("other", "10.79.0.0/24"),
                }.items():
                    body = {"name": name, "kind": "nat", "subnet": subnet}
                    made = clients[user].post(
                        f"{API}/networks", json={**body, "project": users[user][1][0]}
                    )
                    assert made.status_code == 201, made.text
                yield World(ctx, clients)
            finally:
                for user in users:
                    clients[user].__exit__(None, None, None)


def _create(client: TestClient, name: str, **fields: Any) -> Any:
    body = {"name": name, "image": "reference", "memory": "128M", "project": "p1", **fields}
    return client.post(f"{API}/vms", json=body)


def _ports(world: World, vm: str) -> list[tuple[str, str, str | None]]:
    with world.ctx.db.session() as session:
        query = (
            select(PortRow.nic, PortRow.mac, PortRow.address)
            .join(VmRow, VmRow.id == PortRow.vm_id)
            .where(VmRow.name == vm)
            .order_by(PortRow.nic)
        )
        return [(nic, mac, address) for nic, mac, address in session.execute(query)]


def test_a_vm_on_a_network_gets_a_port_and_loses_it_with_its_deletion(world: World) -> None:
    alice = world.clients["alice"]
    made = _create(
        alice, "n1", networks=[{"network": "lan"}, {"network": "user"}, {"network": "lan"}]
    )
    assert made.status_code == 201, made.text
    ports = _ports(world, "n1")
    assert [(nic, address) for nic, _, address in ports] == [
        ("net0", "10.77.0.2"),
        ("net2", "10.77.0.3"),
    ]
    with world.ctx.db.session() as session:
        spec = session.scalars(select(VmRow.spec).where(VmRow.name == "n1")).one()
    for _, mac, _ in ports:
        assert mac in spec  # the MAC is the NIC's for good
    shown = alice.get(f"{API}/networks/lan").json()
    assert {p["vm"] for p in shown["ports"]} == {"n1"}

    deleted = alice.delete(f"{API}/vms/n1")
    assert deleted.status_code == 202, deleted.text
    assert wait_task(alice, deleted.json()["id"])["status"] == "success"
    assert _ports(world, "n1") == []
    assert alice.get(f"{API}/networks/lan").json()["ports"] == []


def test_a_fixed_address_and_refusals_that_leave_nothing(world: World) -> None:
    alice = world.clients["alice"]
    made = _create(alice, "n2", networks=[{"network": "lan", "ip": "10.77.0.40"}])
    assert made.status_code == 201, made.text
    assert [a for _, _, a in _ports(world, "n2")] == ["10.77.0.40"]

    taken = _create(alice, "n3", networks=[{"network": "lan", "ip": "10.77.0.40"}])
    assert taken.status_code == 409, taken.text
    outside = _create(alice, "n3", networks=[{"network": "lan", "ip": "10.99.0.4"}])
    assert outside.status_code == 422 and outside.json()["field"] == "ip", outside.text
    # bob's network is not alice's: as if it did not exist
    foreign = _create(alice, "n3", networks=[{"network": "other"}])
    assert foreign.status_code == 404 and "other" in foreign.json()["message"]
    missing = _create(alice, "n3", networks=[{"network": "nosuch"}])
    assert missing.status_code == 404
    forwards = _create(alice, "n3", networks=[{"network": "lan"}], forwards=["2222:22"])
    assert forwards.status_code == 422 and forwards.json()["field"] == "forwards"
    assert alice.get(f"{API}/vms/n3").status_code == 404
    assert not (world.ctx.home.vms / "n3").exists()
    assert [a for _, _, a in _ports(world, "n2")] == ["10.77.0.40"]
    with world.ctx.db.session() as session:
        assert len(list(session.scalars(select(PortRow)))) == 1
