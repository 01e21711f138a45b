"""The handle every operation takes: the state directory, its database, the host's caps."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from corral.config import Home, default_cache, default_database_url, load_home
from corral.store.db import Database

if TYPE_CHECKING:
    # Only the operations that build or check a VM need the caps (and their pydantic models).
    from corral.host.caps import HostCaps


class Corral:
    """One corral state directory and what operations on it need.

    :param home: the state directory; ``$CORRAL_HOME`` or the default when ``None``.
    :param database_url: the state database; ``$CORRAL_DATABASE_URL`` or the SQLite file in
        ``home`` when ``None``.
    :raise HostError: the database cannot be reached or migrated.
    """

    def __init__(self, home: Home | None = None, database_url: str | None = None) -> None:
        self.home = home or load_home()
        self.home.ensure()
        self.db = Database(database_url or default_database_url(self.home))

    @cached_property
    def caps(self) -> HostCaps:
        """The host's capabilities, probed once and cached (not per state directory)."""
        from corral.host.caps import probe

        return probe(cache_dir=default_cache())

    def close(self) -> None:
        self.db.close()
