"""Fixtures for the store tests: ``database_url`` is SQLite and a real PostgreSQL server.

The PostgreSQL server is this session's own: Debian's ``initdb`` in a short directory under
``/tmp`` and ``pg_ctl start`` listening on a UNIX socket in that directory only (no TCP port),
run as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root).
It starts on the first test that asks for it, gives each test a database of its own, and is
stopped and removed when the session ends, whatever happened. It never touches a system
cluster.

Without PostgreSQL's binaries the PostgreSQL tests are skipped, except under ``CI=true``, where
they fail: CI must run them.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

#: Where Debian installs each PostgreSQL version's server programs.
PG_LIB = Path("/usr/lib/postgresql")

#: Why the PostgreSQL tests cannot run here.
NOT_INSTALLED = "PostgreSQL not installed (scripts/setup --test installs it)"

#: The login the tests use: initdb's superuser, trusted on the private socket.
USER = "postgres"


def pg_bindir() -> Path | None:
    """The newest installed version's ``bin`` directory, ``None`` if none is installed."""
    found = [p.parent for p in PG_LIB.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    if not found:
        return None
    return max(
        found, key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass
class PostgresServer:
    """A running throw-away PostgreSQL server that listens on a UNIX socket only."""

    #: The directory that holds the socket (``.s.PGSQL.5432``), the data and the log.
    socket_dir: Path
    #: An autocommit superuser connection to the ``postgres`` database.
    admin: psycopg.Connection[tuple[object, ...]]
    #: Seconds that initdb and the start took.
    startup_seconds: float
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, dbname: str, password: str = "") -> str:
        """The SQLAlchemy URL of ``dbname`` on this server."""
        login = f"{USER}:{password}" if password else USER
        return f"postgresql+psycopg://{login}@/{dbname}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A new empty database with a fresh name; its URL."""
        name = f"corral_test_{next(self._names)}"
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with status {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """This session's PostgreSQL server (see the module's docstring)."""
    bindir = pg_bindir()
    if bindir is None:
        if in_ci():
            pytest.fail(f"{NOT_INSTALLED}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(NOT_INSTALLED)
    as_server_user: list[str] = []
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(USER)
        except KeyError:
            pytest.fail(f"running as root needs the {USER!r} system user ({NOT_INSTALLED})")
        as_server_user = ["runuser", "-u", USER, "--"]

    started = time.monotonic()
    # Short: the socket's path must fit in sockaddr_un.
    root = Path(tempfile.mkdtemp(prefix="corral-pg-", dir="/tmp"))
    if as_server_user:
        os.chown(root, account.pw_uid, account.pw_gid)
    data, log = root / "data", root / "server.log"
    settings = {
        "listen_addresses": "''",
        "unix_socket_directories": f"'{root}'",
        # Throw-away data: no need to survive a crash, every reason to be quick.
        "fsync": "off",
        "full_page_writes": "off",
        "synchronous_commit": "off",
    }
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    pg_ctl = [*as_server_user, str(bindir / "pg_ctl"), "-D", str(data)]
    admin = None
    try:
        _run(
            [
                *as_server_user,
                str(bindir / "initdb"),
                *("-D", str(data), "-U", USER, "--auth=trust", "--encoding=UTF8"),
                *("--locale=C", "--no-sync", "--no-instructions"),
            ],
            cwd=root,
        )
        try:
            _run([*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"], cwd=root)
        except RuntimeError as exc:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{exc}\nserver log:\n{server_log}") from None
        admin = psycopg.connect(host=str(root), user=USER, dbname="postgres", autocommit=True)
        yield PostgresServer(root, admin, time.monotonic() - started)
    finally:
        if admin is not None:
            admin.close()
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "-w", "stop"],
                cwd=root,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty state database: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'corral.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
