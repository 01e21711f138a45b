"""Migrations: every revision runs on both backends, reaches the models' schema, runs once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from corral.errors import HostError
from corral.store import db
from corral.store.db import HEAD_REVISION, MIGRATION_LOCK_KEY, Database, current_revision
from corral.store.models import Base


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
    return cfg


#: Columns whose server default the migrations set and the models do not declare: 0002 gives
#: ``images.ssh_user`` ``DEFAULT ''`` to fill existing rows. The model could say
#: ``server_default=""`` as well; until it does, this one difference is expected.
SERVER_DEFAULT_ONLY_IN_MIGRATIONS = {("images", "ssh_user")}


def _expected(change: object) -> bool:
    # ("modify_default", schema, table, column, existing, old default, new default)
    return isinstance(change, list) and all(
        op[0] == "modify_default"
        and (op[2], op[3]) in SERVER_DEFAULT_ONLY_IN_MIGRATIONS
        and op[6] is None
        for op in change
    )


def schema_diff(conn: Connection) -> list[object]:
    """What alembic would autogenerate to bring the database to the models: tables, columns,
    indexes, types and server defaults."""
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return [change for change in compare_metadata(context, Base.metadata) if not _expected(change)]


def test_head_revision_constant_is_alembics_head() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.migrated
        assert current_revision(database.engine) == HEAD_REVISION
        with database.engine.connect() as conn:
            assert schema_diff(conn) == []
    finally:
        database.close()


def test_each_migration_runs_up_and_down(database_url: str) -> None:
    """Base to head one revision at a time, back down to nothing, and up again."""
    cfg = alembic_config()
    revisions = [s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()][::-1]
    engine = db.make_engine(database_url)

    def run(step: str, target: str) -> str | None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, step)(cfg, target)
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    try:
        for revision in revisions:
            assert run("upgrade", revision) == revision
        assert run("downgrade", "base") is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        assert run("upgrade", "head") == HEAD_REVISION
        with engine.connect() as conn:
            assert schema_diff(conn) == []
    finally:
        engine.dispose()


def test_reopening_does_not_migrate_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database(database_url).close()

    def fail(_engine: object) -> bool:
        raise AssertionError("migrated twice")

    monkeypatch.setattr(db, "upgrade", fail)
    database = Database(database_url)
    assert not database.migrated
    database.close()


def test_a_database_from_a_newer_corral_is_a_clean_error(database_url: str) -> None:
    Database(database_url).close()
    engine = db.make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(HostError, match="at schema 9999, which this version of corral does not"):
        Database(database_url)


OPEN = """
import sys
from corral.store.db import Database
database = Database(sys.argv[1])
print("migrated" if database.migrated else "found it migrated")
database.close()
"""


def _waiting_for_advisory_lock(url: str) -> int:
    dbname = make_url(url).database
    with psycopg.connect(
        host=make_url(url).query["host"], user="postgres", dbname=dbname, autocommit=True
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _waiting_for_flock(lock_file: Path) -> int:
    """Processes blocked on an flock of ``lock_file`` (``->`` lines of /proc/locks)."""
    inode = f":{lock_file.stat().st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and "FLOCK" in line and inode in line)


def test_concurrent_opens_migrate_once(database_url: str) -> None:
    """Two processes open a new database at once: both succeed, exactly one migrates.

    The test holds the backend's migration lock (the advisory lock, or the flock beside the
    SQLite file) until both processes wait for it, so they really do race.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        holder = psycopg.connect(
            host=url.query["host"], user="postgres", dbname=url.database, autocommit=False
        )
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))

        def waiting() -> int:
            return _waiting_for_advisory_lock(database_url)

        release = holder.close
    else:
        import fcntl

        assert url.database is not None
        lock_file = Path(url.database).with_suffix(".migrate.lock")
        holder_file = lock_file.open("a")
        fcntl.flock(holder_file, fcntl.LOCK_EX)

        def waiting() -> int:
            return _waiting_for_flock(lock_file)

        release = holder_file.close

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while waiting() < 2:
            if any(p.poll() is not None for p in procs):
                break  # one ended before waiting: the lock is released, then its output shown
            assert time.monotonic() < deadline, "the processes never waited for the lock"
            time.sleep(0.02)
    finally:
        release()
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted(out.strip() for out, _err in results) == ["found it migrated", "migrated"]
    database = Database(database_url)
    assert not database.migrated
    assert current_revision(database.engine) == HEAD_REVISION
    database.close()
