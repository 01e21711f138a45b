"""The spool of uploaded files: where an image sent to corrald waits until it is imported.

An upload is written to a new file in the spool directory (inside the state directory, so on
the file system the catalogue converts into), verified, imported, and removed. Nothing is
kept in memory: the API writes each piece of the request body as it arrives, and refuses a
body larger than :data:`MAX_UPLOAD` or than the free space.

A spooled file is named ``<pid>-<random>.part`` after the daemon that holds it. Each
:func:`new_upload` first removes what no one holds any more: the files of daemons that are
gone (killed while receiving or importing) and this daemon's own files it no longer holds
(an import task cancelled before it ran).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Final

from corral.errors import HostError, InvalidInput
from corral.units import GiB, format_size

#: The largest upload corrald accepts, in bytes.
MAX_UPLOAD: Final = 256 * GiB
#: The spool's name inside the images directory (no image name starts with a dot).
SPOOL_NAME: Final = ".uploads"

_held: set[Path] = set()
_lock = threading.Lock()


def spool(images: Path) -> Path:
    """The spool directory of the images directory ``images``."""
    return images / SPOOL_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(path: Path) -> bool:
    """Whether no one holds the spooled file ``path`` (the caller holds :data:`_lock`)."""
    owner, _, _ = path.name.partition("-")
    if not owner.isdigit():
        return True
    if int(owner) == os.getpid():
        return path not in _held
    return not _alive(int(owner))


def check_size(images: Path, size: int | None, limit: int = MAX_UPLOAD) -> None:
    """Check that an upload of ``size`` bytes (``None``: not said) fits.

    :raise InvalidInput: it is larger than ``limit`` (field ``file``).
    :raise HostError: the spool's file system has less free space than that.
    """
    if size is None:
        return
    if size > limit:
        raise InvalidInput(
            "file",
            f"{format_size(size)} is larger than corrald accepts ({format_size(limit)})",
        )
    free = shutil.disk_usage(images).free
    if size > free:
        raise HostError(
            f"not enough space for the upload: it is {format_size(size)}, "
            f"{format_size(free)} is free"
        )


def new_upload(images: Path) -> Path:
    """A new, empty spooled file (mode 0600), held until :func:`release`.

    :param images: the state directory's images directory.
    """
    directory = spool(images)
    directory.mkdir(mode=0o700, exist_ok=True)
    with _lock:
        for leftover in directory.iterdir():
            if _stale(leftover):
                leftover.unlink(missing_ok=True)
        path = directory / f"{os.getpid()}-{uuid.uuid4().hex}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        _held.add(path)
    return path


def release(path: Path) -> None:
    """Remove the spooled file ``path`` and forget it."""
    with _lock:
        _held.discard(path)
        path.unlink(missing_ok=True)


def held() -> frozenset[Path]:
    """The spooled files this process holds."""
    with _lock:
        return frozenset(_held)
