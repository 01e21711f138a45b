"""Opening the state database, migrated to the newest schema.

Every command opens the database; the schema check is one ``SELECT`` on ``alembic_version``
and alembic itself is imported only when a migration has to run.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

#: The newest migration; a test checks it is alembic's head.
HEAD_REVISION = "0002"

_MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with corral's SQLite settings (WAL, busy timeout)."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database, ``None`` for a new one."""
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except OperationalError:
        return None
    return None if row is None else str(row[0])


def upgrade(engine: Engine) -> None:
    """Run alembic migrations up to head."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """The state database of one corral home."""

    def __init__(self, url: str, lock_path: Path | None = None) -> None:
        """Open (and migrate, under a file lock) the database at ``url``."""
        self.engine = make_engine(url)
        if current_revision(self.engine) != HEAD_REVISION:
            self._migrate(lock_path)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_file(cls, path: Path) -> Database:
        return cls(f"sqlite:///{path}", lock_path=path.with_suffix(".migrate.lock"))

    def _migrate(self, lock_path: Path | None) -> None:
        if lock_path is None:
            upgrade(self.engine)
            return
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if current_revision(self.engine) != HEAD_REVISION:
                upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
