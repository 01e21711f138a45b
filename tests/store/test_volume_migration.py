"""Migration 0005 (volumes) on SQLite and PostgreSQL: it keeps what 0004 held, and the table's
constraints hold on both backends (names unique per project, known formats, positive sizes,
a deleted VM detaches its volumes)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from corral.store import db
from corral.store.models import DEFAULT_PROJECT_ID
from tests.store.test_migrations import alembic_config

P2 = "22222222-2222-4222-8222-222222222222"
VM_ID = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def _migrate(engine: Engine, step: str, target: str) -> str | None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, step)(cfg, target)
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _volume(conn: Connection, volume_id: str, name: str, project_id: str, **values: object) -> None:
    row: dict[str, object] = {
        "id": volume_id,
        "name": name,
        "project_id": project_id,
        "format": "qcow2",
        "size": 1 << 30,
        "description": "",
        "attached_to": None,
        "created_at": datetime.now(UTC),
    }
    row.update(values)
    conn.execute(
        text(
            "INSERT INTO volumes (id, name, project_id, format, size, description, attached_to, "
            "created_at) VALUES (:id, :name, :project_id, :format, :size, :description, "
            ":attached_to, :created_at)"
        ),
        row,
    )


def _refused(engine: Engine, volume_id: str, name: str, project_id: str, **values: object) -> bool:
    try:
        with engine.begin() as conn:
            _volume(conn, volume_id, name, project_id, **values)
    except IntegrityError:
        return True
    return False


def test_0005_keeps_data_and_enforces_the_volume_rules(engine: Engine) -> None:
    assert _migrate(engine, "upgrade", "0004") == "0004"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (id, name, description, created_at) "
                "VALUES (:id, 'p2', '', :now)"
            ),
            {"id": P2, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO vms (id, name, project_id, spec, state, reason, created_at, "
                "state_changed_at) VALUES (:id, 'web', :project, '{}', 'defined', '', :now, :now)"
            ),
            {"id": VM_ID, "project": DEFAULT_PROJECT_ID, "now": now},
        )
    assert _migrate(engine, "upgrade", "0005") == "0005"
    assert "volumes" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM vms")).scalars().all() == ["web"]

    with engine.begin() as conn:
        _volume(conn, "v1", "data", DEFAULT_PROJECT_ID, attached_to=VM_ID)
        _volume(conn, "v2", "data", P2)  # the same name in another project
    assert _refused(engine, "v3", "data", P2)  # twice in one project
    assert _refused(engine, "v4", "other", P2, format="vmdk")
    assert _refused(engine, "v5", "other", P2, size=0)
    assert _refused(engine, "v6", "other", "no-such-project")
    assert _refused(engine, "v7", "other", P2, attached_to="no-such-vm")

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM vms WHERE id = :id"), {"id": VM_ID})
    with engine.connect() as conn:
        attached = conn.execute(text("SELECT attached_to FROM volumes WHERE id = 'v1'"))
        assert attached.scalar_one() is None  # deleting the VM detached it

    assert _migrate(engine, "downgrade", "0004") == "0004"
    assert "volumes" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM projects WHERE id = :id"), {"id": P2}).all()
