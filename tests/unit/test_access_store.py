"""Migration 0003 (access): its tables and columns on SQLite and PostgreSQL, the project
``default`` and the backfill of existing VMs, images and key pairs into it."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from corral.store import db, models
from corral.store.db import HEAD_REVISION, make_engine
from corral.store.models import DEFAULT_PROJECT, DEFAULT_PROJECT_ID, Base

try:  # the store tests' own throw-away PostgreSQL server, shared rather than started twice
    from tests.store.conftest import postgres_server  # noqa: F401  (a fixture)

    HAVE_PG_FIXTURE = True
except ImportError:  # pragma: no cover - the store tests moved
    HAVE_PG_FIXTURE = False

MIGRATIONS = Path(db.__file__).with_name("migrations")


def migrate(engine: Engine, revision: str, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database: an SQLite file, then a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'corral.db'}"
    else:
        if not HAVE_PG_FIXTURE:
            pytest.skip("the PostgreSQL fixture of tests/store is not there")
        url = request.getfixturevalue("postgres_server").create_database()
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_the_access_migration_is_on_the_way_to_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    assert script.get_current_head() == HEAD_REVISION
    assert "0003" in {rev.revision for rev in script.walk_revisions()}


def test_the_migration_inserts_the_models_default_project_id() -> None:
    path = MIGRATIONS / "versions" / "0003_access.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DEFAULT_PROJECT_ID == models.DEFAULT_PROJECT_ID


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    migrate(engine, "head")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_tables_and_named_constraints(engine: Engine) -> None:
    migrate(engine, "head")
    found = inspect(engine)
    for table in ("projects", "users", "memberships", "tokens", "quotas", "audit_log"):
        assert found.has_table(table)
    for table in ("vms", "images", "keypairs"):
        column = {c["name"]: c for c in found.get_columns(table)}["project_id"]
        assert column["nullable"] is False
        keys = found.get_foreign_keys(table)
        assert [(k["name"], k["referred_table"]) for k in keys] == [
            (f"fk_{table}_project_id_projects", "projects")
        ]
        assert f"ix_{table}_project_id" in {i["name"] for i in found.get_indexes(table)}
    tokens = {c["name"] for c in found.get_columns("tokens")}
    assert "secret_hash" in tokens
    assert not {"secret", "token"} & tokens
    checks = {c["name"] for c in found.get_check_constraints("users")}
    assert "ck_users_role" in checks


def test_existing_objects_go_to_the_default_project(engine: Engine) -> None:
    migrate(engine, "0002")
    now = "2024-05-01 12:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO vms (id, name, spec, state, reason, created_at, state_changed_at) "
                "VALUES ('v1', 'web', '{}', 'defined', '', :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO images (id, name, path, source_format, virtual_size, actual_size, "
                "sha256, os_hint, cmdline, created_at) "
                "VALUES ('i1', 'deb', '/x', 'qcow2', 1, 1, 's', '', '', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO keypairs (id, name, kind, public_key, fingerprint, comment, "
                "created_at) VALUES ('k1', 'me', 'ssh-ed25519', 'x', 'f', '', :now)"
            ),
            {"now": now},
        )
    migrate(engine, "head")
    with engine.connect() as conn:
        projects = conn.execute(text("SELECT id, name FROM projects")).all()
        assert [tuple(p) for p in projects] == [(DEFAULT_PROJECT_ID, DEFAULT_PROJECT)]
        for table in ("vms", "images", "keypairs"):
            owners = conn.execute(text(f"SELECT project_id FROM {table}")).scalars().all()
            assert owners == [DEFAULT_PROJECT_ID]


def test_project_id_is_required_and_must_name_a_project(engine: Engine) -> None:
    migrate(engine, "head")
    insert = text(
        "INSERT INTO keypairs (id, name, kind, public_key, fingerprint, comment, created_at, "
        "project_id) VALUES (:id, :id, 'ssh-ed25519', 'x', 'f', '', '2024-05-01', :project)"
    )
    for project in (None, "no-such-project"):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"id": "k1", "project": project})
    with engine.begin() as conn:
        conn.execute(insert, {"id": "k2", "project": DEFAULT_PROJECT_ID})


def test_downgrade_and_upgrade_again(engine: Engine) -> None:
    migrate(engine, "head")
    migrate(engine, "0002", down=True)
    found = inspect(engine)
    assert not found.has_table("projects")
    assert "project_id" not in {c["name"] for c in found.get_columns("vms")}
    migrate(engine, "head")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
