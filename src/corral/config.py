"""Where corral keeps its state on disk.

A state directory (``$CORRAL_HOME``; ``/var/lib/corral`` for root, ``~/.local/share/corral``
otherwise) holds ``corral.db``, ``images/``, ``vms/<name>/`` and ``cache/``. The state
database is that SQLite file unless ``$CORRAL_DATABASE_URL`` names another (PostgreSQL).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: UNIX socket paths longer than this do not fit ``sockaddr_un``.
MAX_SOCKET_PATH = 107


def default_home() -> Path:
    """The state directory: ``$CORRAL_HOME`` or the per-user / system default."""
    env = os.environ.get("CORRAL_HOME")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/corral")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "corral"


def default_cache() -> Path:
    """Where built artefacts (the reference guest, probed capabilities) are cached."""
    env = os.environ.get("CORRAL_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/cache/corral")
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "corral"


@dataclass(frozen=True)
class Home:
    """The layout of one state directory."""

    #: The state directory itself.
    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "corral.db"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def vm_dir(self, name: str) -> Path:
        return self.vms / name

    def image_dir(self, name: str) -> Path:
        return self.images / name

    def ensure(self) -> None:
        """Create the directory tree (mode 0700 for the root: it holds sockets and disks)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in (self.images, self.vms, self.locks, self.cache):
            sub.mkdir(exist_ok=True, mode=0o700)


def default_database_url(home: Home) -> str:
    """The state database's URL: ``$CORRAL_DATABASE_URL``, else the SQLite file in ``home``.

    :param home: the state directory whose ``corral.db`` is the default.
    """
    env = os.environ.get("CORRAL_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{home.db_path}"


def load_home() -> Home:
    """The :class:`Home` for this process, created if missing."""
    home = Home(default_home())
    home.ensure()
    return home
