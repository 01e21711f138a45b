"""Opening the state database, migrated to the newest schema.

The database is SQLite (a file in the state directory, the default) or PostgreSQL (a
``postgresql+psycopg://`` URL). Every command opens it; the schema check is one ``SELECT`` on
``alembic_version`` and alembic itself is imported only when a migration has to run.
Migrations are serialised across processes: by an ``flock`` on a file beside the SQLite
database, by a transaction-level advisory lock on PostgreSQL (held by the migration's own
transaction, so the server drops it if the migrating process dies).

Failures to reach or to migrate the database are :class:`~corral.errors.HostError`; their
messages show the URL with its password hidden.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from corral.errors import HostError

#: The newest migration; a test checks it is alembic's head.
HEAD_REVISION = "0009"

#: Seconds to wait for a PostgreSQL server to answer (unless the URL sets ``connect_timeout``).
CONNECT_TIMEOUT = 10

#: Key of the PostgreSQL advisory lock that serialises migrations ("corral" in ASCII).
MIGRATION_LOCK_KEY = 0x636F7272616C

_MIGRATIONS = Path(__file__).with_name("migrations")

#: The drivers corral accepts, by the name a URL may give, and the one it uses.
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def parse_url(url: str) -> URL:
    """``url`` as an SQLAlchemy URL, with PostgreSQL's driver made explicit (psycopg 3).

    :param url: ``sqlite:///PATH`` or ``postgresql[+psycopg]://USER[:PASSWORD]@HOST/DBNAME``.
    :raise HostError: the URL cannot be parsed or names a database corral does not support.
    """
    try:
        parsed = make_url(url)
        # The port is parsed lazily; a bad one fails here rather than at connect time.
        _ = parsed.port
    except (ArgumentError, ValueError):
        raise HostError(
            "the state database URL cannot be parsed; expected sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DBNAME"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise HostError(
            f"state database {_shown(parsed)}: corral supports sqlite:///PATH and "
            f"postgresql+psycopg:// URLs, not {parsed.drivername}://"
        )
    return parsed.set(drivername=driver)


def _shown(url: URL) -> str:
    """``url`` for messages: its password hidden, its query readable (``?host=/run/...``)."""
    return unquote(url.render_as_string(hide_password=True))


def _redacted(message: str, url: URL) -> str:
    """``message`` without ``url``'s password, in any spelling a driver might echo."""
    password = url.password
    if password:
        for spelling in {str(password), quote_plus(str(password))}:
            message = message.replace(spelling, "***")
    return message


def _reason(exc: BaseException, url: URL) -> str:
    """The driver's own words for ``exc`` on one line, without the password."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return _redacted(" ".join(lines) or type(cause).__name__, url)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # The timeout first: switching a new file to WAL takes a write lock, and two processes
    # opening a new state directory at once would otherwise fail at once ("database is
    # locked") instead of one waiting for the other.
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url`` with corral's settings for its backend.

    SQLite: WAL, a busy timeout, foreign keys. PostgreSQL: a connection is checked before it is
    handed out (a server restart costs no failed command), a connect timeout, and the session
    time zone UTC (timestamps come back as UTC on every host).

    :raise HostError: the URL is not one corral supports.
    """
    parsed = parse_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    if "options" not in parsed.query:
        connect_args["options"] = "-c timezone=UTC"
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


@contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    """A connection from ``engine``; only the connecting itself is translated into an error.

    :raise HostError: the server cannot be reached, refuses the login, or has no such database.
    """
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise HostError(
            f"cannot open the state database {_shown(engine.url)}: {_reason(exc, engine.url)}"
        ) from exc
    with conn:
        yield conn


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database, ``None`` for a new one.

    :raise HostError: the database cannot be reached.
    """
    with _connect(engine) as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except (OperationalError, ProgrammingError):
            # No alembic_version table yet: SQLite says OperationalError, PostgreSQL says
            # ProgrammingError (undefined table).
            return None
    return None if row is None else str(row[0])


def upgrade(engine: Engine) -> bool:
    """Run alembic migrations up to head, in one transaction, unless already there.

    On PostgreSQL the transaction first takes an advisory lock, so concurrent callers wait for
    each other and the later ones find the schema migrated. SQLite callers serialise with
    :class:`Database`'s file lock.

    :return: whether any migration ran.
    :raise HostError: the database cannot be reached or refused a migration.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.util import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    failed = f"cannot migrate the state database {_shown(engine.url)} to schema {HEAD_REVISION}"
    with _connect(engine) as conn:
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                found = MigrationContext.configure(conn).get_current_revision()
                if found == HEAD_REVISION:
                    return False
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except DBAPIError as exc:
            raise HostError(f"{failed}: {_reason(exc, engine.url)}") from exc
        except CommandError as exc:
            # The recorded revision is not one of ours: a newer corral migrated the database.
            raise HostError(
                f"{failed}: it is at schema {found}, which this version of corral does not know "
                "(a newer corral migrated it)"
            ) from exc
    return True


def _lock_path(url: URL) -> Path | None:
    """The migration lock file beside an SQLite database file; ``None`` otherwise."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).with_suffix(".migrate.lock")


class Database:
    """The state database of one corral home, at the newest schema.

    :param url: ``sqlite:///PATH`` or ``postgresql+psycopg://USER:PASSWORD@HOST/DBNAME``
        (``postgresql://`` means the same).
    :param lock_path: the file whose ``flock`` serialises migrations of an SQLite file;
        by default ``PATH`` with the suffix ``.migrate.lock``. Unused for PostgreSQL.
    :raise HostError: the URL is not supported, or the database cannot be reached or migrated.
    """

    def __init__(self, url: str, lock_path: Path | None = None) -> None:
        #: The database's URL; its ``str`` hides the password.
        self.url = parse_url(url)
        self.engine = make_engine(self.url)
        #: Whether opening it ran migrations (``False`` when another process did).
        self.migrated = False
        try:
            if current_revision(self.engine) != HEAD_REVISION:
                self.migrated = self._migrate(lock_path or _lock_path(self.url))
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_url(cls, url: str) -> Database:
        """The database at ``url`` (see :class:`Database`).

        :raise HostError: the URL is not supported, or the database cannot be reached.
        """
        return cls(url)

    @classmethod
    def for_file(cls, path: Path) -> Database:
        """The SQLite database in the file ``path``, created if missing."""
        return cls(f"sqlite:///{path}", lock_path=path.with_suffix(".migrate.lock"))

    def _migrate(self, lock_path: Path | None) -> bool:
        if lock_path is None:
            return upgrade(self.engine)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
