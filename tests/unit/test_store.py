"""The state database: migrations reach the models' schema and are recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from corral.store import db
from corral.store.db import HEAD_REVISION, Database, current_revision
from corral.store.models import Base


def test_head_revision_constant_is_alembics_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    database = Database.for_file(tmp_path / "corral.db")
    assert current_revision(database.engine) == HEAD_REVISION
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    database.close()


def test_reopening_does_not_migrate_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Database.for_file(tmp_path / "corral.db").close()

    def fail(_engine: object) -> None:
        raise AssertionError("migrated twice")

    monkeypatch.setattr(db, "upgrade", fail)
    Database.for_file(tmp_path / "corral.db").close()
