"""Migration 0008 (networks, ports) on SQLite and PostgreSQL: the tables' constraints hold on
both backends (network names unique on the host, known kinds; MACs unique, addresses unique
within a network; a deleted VM's ports go with it; a network with ports stays)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from corral.store import db
from corral.store.models import DEFAULT_PROJECT_ID
from tests.store.test_volume_migration import _migrate

VM_ID = "11111111-1111-4111-8111-111111111111"
NOW = datetime.now(UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def _run(engine: Engine, sql: str, **values: object) -> bool:
    """Run ``sql``; whether the database refused it."""
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), {"now": NOW, **values})
    except IntegrityError:
        return True
    return False


NETWORK = (
    "INSERT INTO networks (id, name, project_id, kind, spec, created_at) "
    "VALUES (:id, :name, :project, :kind, '{}', :now)"
)
PORT = (
    "INSERT INTO ports (id, vm_id, nic, network_id, mac, address, created_at) "
    "VALUES (:id, :vm, :nic, :network, :mac, :address, :now)"
)


def test_0008_enforces_the_network_rules(engine: Engine) -> None:
    assert _migrate(engine, "upgrade", "0007") == "0007"
    assert not _run(
        engine,
        "INSERT INTO vms (id, name, project_id, spec, state, reason, created_at, "
        "state_changed_at) VALUES (:id, 'web', :project, '{}', 'defined', '', :now, :now)",
        id=VM_ID,
        project=DEFAULT_PROJECT_ID,
    )
    assert _migrate(engine, "upgrade", "0008") == "0008"
    assert {"networks", "ports"} <= set(inspect(engine).get_table_names())

    net = {"project": DEFAULT_PROJECT_ID, "kind": "nat"}
    assert not _run(engine, NETWORK, id="n1", name="lan", **net)
    assert _run(engine, NETWORK, id="n2", name="lan", **net)  # names are unique
    assert _run(engine, NETWORK, id="n3", name="x", project=DEFAULT_PROJECT_ID, kind="vxlan")
    assert _run(engine, NETWORK, id="n4", name="y", project="no-such-project", kind="nat")
    assert not _run(engine, NETWORK, id="n5", name="dmz", **net)

    port = {"vm": VM_ID, "network": "n1"}
    assert not _run(engine, PORT, id="p1", nic="net0", mac="m1", address="10.0.0.2", **port)
    assert _run(engine, PORT, id="p2", nic="net1", mac="m1", address="10.0.0.3", **port)
    assert _run(engine, PORT, id="p3", nic="net1", mac="m2", address="10.0.0.2", **port)
    assert _run(engine, PORT, id="p4", nic="net0", mac="m3", address="10.0.0.4", **port)
    assert not _run(  # the same address on another network
        engine, PORT, id="p5", nic="net1", mac="m4", address="10.0.0.2", vm=VM_ID, network="n5"
    )
    assert not _run(  # no address (a bridged network), twice
        engine, PORT, id="p6", nic="net2", mac="m5", address=None, **port
    )
    assert not _run(engine, PORT, id="p7", nic="net3", mac="m6", address=None, **port)
    assert _run(engine, PORT, id="p8", nic="net4", mac="m7", address=None, vm="no-vm", network="n1")

    assert _run(engine, "DELETE FROM networks WHERE id = 'n1'")  # ports are on it
    assert not _run(engine, "DELETE FROM vms WHERE id = :id", id=VM_ID)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ports")).scalar_one() == 0
    assert not _run(engine, "DELETE FROM networks WHERE id = 'n1'")

    assert _migrate(engine, "downgrade", "0007") == "0007"
    assert not {"networks", "ports"} & set(inspect(engine).get_table_names())
