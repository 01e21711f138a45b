"""The volume pool: volumes' files in ``$CORRAL_HOME/volumes/``, and what a volume may be.

A volume is one file, ``volumes/<id>.qcow2`` or ``volumes/<id>.raw``, named by the volume's
id (never by its name, so a rename touches no file) and private to corral's user. Creating
one is ``qemu-img create`` with the format named (``-f``, never guessed): constant time
whatever the size, as a new qcow2 holds only metadata and a new raw file is sparse. The
file's size on the host (``st_blocks``) grows as a guest writes.

:func:`parse_volume_size` and :func:`check_volume_format` are pure; the other functions
touch the pool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal, get_args

from corral.errors import AlreadyExists, InvalidInput
from corral.qemu import img
from corral.storage.disks import DiskUsage, disk_usage, remove_disk
from corral.units import MiB, format_size, parse_size

#: The formats of volumes.
VolumeFormat = Literal["qcow2", "raw"]
VOLUME_FORMATS: Final[tuple[VolumeFormat, ...]] = get_args(VolumeFormat)

#: The smallest volume: smaller disks are of no use to a guest.
MIN_VOLUME_SIZE: Final = 1 * MiB
#: The largest volume: the largest file ext4 holds (a raw volume is one file), and far more
#: than any datastore of one host has to give.
MAX_VOLUME_SIZE: Final = 16 * 1024**4
#: Volume sizes are whole sectors.
SECTOR: Final = 512

#: The pool's directory inside the state directory.
POOL: Final = "volumes"
#: New volume files hold guest data: only corral's user reads them.
VOLUME_MODE: Final = 0o600


def parse_volume_size(value: object, field: str = "size") -> int:
    """A volume's size in bytes, from ``"10G"`` (binary units) or a number of bytes.

    :param value: what a user gave.
    :param field: the field named in the error.
    :raise InvalidInput: not a size, not whole sectors, or outside
        :data:`MIN_VOLUME_SIZE`..:data:`MAX_VOLUME_SIZE`.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(field, "must be a size such as '10G' or a number of bytes")
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise InvalidInput(field, str(exc)) from None
    if not MIN_VOLUME_SIZE <= size <= MAX_VOLUME_SIZE:
        raise InvalidInput(
            field,
            f"{format_size(size)} is out of range: a volume has "
            f"{format_size(MIN_VOLUME_SIZE)} to {format_size(MAX_VOLUME_SIZE)}",
        )
    if size % SECTOR:
        raise InvalidInput(field, f"{size} bytes is not a multiple of {SECTOR}")
    return size


def check_volume_format(value: str, field: str = "format") -> VolumeFormat:
    """:raise InvalidInput: ``value`` is not one of :data:`VOLUME_FORMATS`."""
    for allowed in VOLUME_FORMATS:
        if value == allowed:
            return allowed
    raise InvalidInput(
        field, f"{value!r} is not a volume format; use {' or '.join(VOLUME_FORMATS)}"
    )


def pool_dir(root: Path) -> Path:
    """The pool of the state directory ``root`` (which may not exist yet)."""
    return root / POOL


def ensure_pool(root: Path) -> Path:
    """The pool of the state directory ``root``, created (mode 0700) if missing."""
    pool = pool_dir(root)
    pool.mkdir(mode=0o700, exist_ok=True)
    return pool


def volume_path(root: Path, volume_id: str, fmt: VolumeFormat) -> Path:
    """Where the volume ``volume_id`` of format ``fmt`` lives in ``root``'s pool.

    :raise ValueError: ``volume_id`` could name a file outside the pool.
    """
    if not volume_id or "/" in volume_id or volume_id.startswith("."):
        raise ValueError(f"not a volume id: {volume_id!r}")
    return pool_dir(root) / f"{volume_id}.{fmt}"


def create_volume_file(path: Path, fmt: VolumeFormat, size: int) -> None:
    """Create a blank volume; nothing is left at ``path`` if it fails.

    :param path: the new file (see :func:`volume_path`); must not exist.
    :param fmt: its format, given to qemu-img with ``-f``.
    :param size: virtual size in bytes (see :func:`parse_volume_size`).
    :raise AlreadyExists: ``path`` exists.
    :raise ToolError: qemu-img failed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, VOLUME_MODE)
    except FileExistsError as exc:
        raise AlreadyExists("volume file", str(path)) from exc
    os.close(fd)
    try:
        img.create(path, fmt, size)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove_volume_file(path: Path) -> None:
    """Delete a volume's file; a missing one is not an error.

    :raise ImageError: ``path`` is not a regular file (left alone).
    """
    remove_disk(path)


def volume_usage(path: Path, fmt: VolumeFormat) -> DiskUsage:
    """Virtual size and host allocation of a volume's file, without qemu-img.

    :raise NotFound: the file is missing.
    :raise ImageError: it cannot be read as ``fmt``.
    """
    return disk_usage(path, fmt)


def check_growth(current: int, new: int, field: str = "size") -> None:
    """A volume only grows: a guest's file system does not survive losing its end.

    :raise InvalidInput: ``new`` is not larger than ``current``.
    """
    if new <= current:
        raise InvalidInput(
            field,
            f"{format_size(new)} is not larger than the volume's {format_size(current)}: "
            "a volume only grows",
        )


def grow_volume_file(path: Path, fmt: VolumeFormat, size: int) -> None:
    """Grow a volume that no running VM has open to ``size`` bytes (``qemu-img resize``,
    the format named).

    :raise ToolError: qemu-img failed (the file keeps its size).
    """
    img.resize(path, fmt, size)
