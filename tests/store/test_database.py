"""Opening the state database: URLs, each backend's settings, clean errors, rows round trip."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from corral.compute.context import Corral
from corral.config import Home, default_database_url
from corral.errors import HostError
from corral.store.db import Database, parse_url
from corral.store.models import ImageRow, KeyPairRow, VmRow

from .conftest import PostgresServer

PASSWORD = "s3cr3t-Pa55"


def assert_clean(error: BaseException) -> None:
    """Neither the error, nor its causes, nor the traceback a user might see has the password."""
    shown = "".join(traceback.format_exception(error))
    assert PASSWORD not in shown
    assert PASSWORD.lower() not in shown.lower()


def vm_row(name: str, **fields: object) -> VmRow:
    return VmRow(id=f"id-{name}", name=name, spec="{}", state="defined", image=None, **fields)


def test_sqlite_settings(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'corral.db'}")
    with database.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    database.close()


def test_a_lost_postgresql_connection_is_replaced(postgres_server: PostgresServer) -> None:
    """``pool_pre_ping``: a pooled connection the server dropped is not handed out."""
    database = Database(postgres_server.create_database())
    with database.session() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
        assert session.execute(text("SHOW TimeZone")).scalar() == "UTC"
    postgres_server.admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with database.session() as session:
        assert session.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    database.close()


def test_for_file_and_for_url_open_the_same_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    first = Database.for_file(path)
    assert first.migrated
    assert path.with_suffix(".migrate.lock").exists()
    first.close()
    again = Database.for_url(f"sqlite:///{path}")
    assert not again.migrated
    again.close()


def test_postgresql_without_a_driver_means_psycopg() -> None:
    url = parse_url(f"postgresql://corral:{PASSWORD}@db.example/corral")
    assert url.drivername == "postgresql+psycopg"
    assert PASSWORD not in str(url)


@pytest.mark.parametrize(
    "url",
    [
        # No server at that socket.
        f"postgresql+psycopg://corral:{PASSWORD}@/corral?host=/nonexistent/corral-test",
        # Nothing listens on port 1.
        f"postgresql+psycopg://corral:{PASSWORD}@127.0.0.1:1/corral",
    ],
    ids=["socket", "tcp"],
)
def test_an_unreachable_server_is_a_clean_host_error(url: str) -> None:
    with pytest.raises(HostError) as caught:
        Database(url)
    message = str(caught.value)
    assert message.startswith("cannot open the state database postgresql+psycopg://corral:***@")
    assert "connection" in message
    assert "\n" not in message
    assert_clean(caught.value)


def test_a_missing_database_is_a_clean_host_error(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("no_such_database", password=PASSWORD)
    with pytest.raises(HostError, match='database "no_such_database" does not exist') as caught:
        Database(url)
    assert_clean(caught.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("corral.db", "cannot be parsed"),
        (f"postgresql+psycopg://corral:{PASSWORD}@db.example:notaport/corral", "cannot be parsed"),
        (f"mysql://corral:{PASSWORD}@db.example/corral", "not mysql://"),
        (
            f"postgresql+psycopg2://corral:{PASSWORD}@db.example/corral",
            r"not postgresql\+psycopg2://",
        ),
    ],
    ids=["not-a-url", "bad-port", "mysql", "psycopg2"],
)
def test_an_unusable_url_is_a_clean_host_error(url: str, says: str) -> None:
    with pytest.raises(HostError, match=says) as caught:
        Database(url)
    assert_clean(caught.value)


def test_rows_round_trip(database_url: str) -> None:
    """What the compute layer stores comes back the same on both backends."""
    database = Database(database_url)
    started = datetime(2026, 5, 20, 12, 30, 15, 123456, tzinfo=UTC)
    with database.session() as session:
        session.add(
            vm_row(
                "web-1",
                pid=4242,
                pid_start=2**40 + 7,
                started_at=started,
                reason="crashed: signal 9 — ünïcode",
            )
        )
        session.add(
            ImageRow(
                id="img-1",
                name="debian-12",
                path="/var/lib/corral/images/debian-12/disk.qcow2",
                source_format="qcow2",
                virtual_size=10 * 2**40,
                actual_size=2**31 + 1,
                sha256="0" * 64,
            )
        )
        session.add(
            KeyPairRow(
                id="key-1",
                name="me",
                kind="ssh-ed25519",
                public_key="ssh-ed25519 AAAA me@laptop",
                fingerprint="SHA256:abc",
            )
        )
    with database.session() as session:
        vm = session.execute(select(VmRow).where(VmRow.name == "web-1")).scalar_one()
        image = session.get(ImageRow, "img-1")
        key = session.get(KeyPairRow, "key-1")
    assert vm.pid_start == 2**40 + 7
    assert vm.reason == "crashed: signal 9 — ünïcode"
    assert vm.ssh_user is None
    # SQLite gives timestamps back without their zone (they are stored as UTC); PostgreSQL
    # gives them back in the session's zone, which corral sets to UTC.
    assert vm.started_at is not None
    assert vm.started_at.replace(tzinfo=vm.started_at.tzinfo or UTC) == started
    assert vm.started_at.utcoffset() in (None, timedelta(0))
    assert image is not None
    assert image.virtual_size == 10 * 2**40
    assert image.ssh_user == ""
    assert key is not None
    assert key.comment == ""
    database.close()


def test_names_are_unique(database_url: str) -> None:
    database = Database(database_url)
    with database.session() as session:
        session.add(vm_row("web-1"))
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(VmRow(id="other", name="web-1", spec="{}", state="defined"))
    with database.session() as session:
        assert session.execute(select(func.count()).select_from(VmRow)).scalar() == 1
    database.close()


def test_the_database_url_comes_from_the_environment(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path / "state")
    monkeypatch.delenv("CORRAL_DATABASE_URL", raising=False)
    assert default_database_url(home) == f"sqlite:///{home.db_path}"

    monkeypatch.setenv("CORRAL_DATABASE_URL", database_url)
    assert default_database_url(home) == database_url
    corral = Corral(home)
    try:
        assert corral.db.url == make_url(database_url)
        with corral.db.session() as session:
            session.add(vm_row("web-1"))
    finally:
        corral.close()
    assert not home.db_path.exists()
