"""Shared pytest configuration."""

from __future__ import annotations

import pytest

from tests import daemons


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--regen-golden``: rewrite the files under ``tests/golden`` instead of comparing."""
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite golden files (tests/golden/**) from the current output; review the diff",
    )


@pytest.fixture(autouse=True)
def _no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests make their own state directories: a developer's ``$CORRAL_DATABASE_URL`` must
    not send them to another database (the store tests pass their URLs explicitly)."""
    monkeypatch.delenv("CORRAL_DATABASE_URL", raising=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop every corrald a CLI verb started on demand during the session."""
    del session, exitstatus
    daemons.stop_all()
