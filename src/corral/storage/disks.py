"""Per-VM disks: linked clones of catalogue images, blank disks, and what they use.

A VM's disk made from an image is a qcow2 overlay whose backing file is the image (absolute
name, format ``qcow2`` written in the overlay, so QEMU never guesses it). Creating one writes
a few hundred KiB of metadata whatever the image's size; the image stays read-only and shared.

:func:`disk_usage` reads no more than the qcow2 header, without qemu-img, so listing many VMs
stays fast.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.errors import AlreadyExists, ImageError, InvalidInput, NotFound
from corral.qemu import img
from corral.storage.formats import QCOW2_HEADER_BYTES, QCOW2_MAGIC, parse_qcow2_header
from corral.units import format_size

#: Formats of VM disks.
DiskFormat = Literal["qcow2", "raw"]

#: qcow2 virtual sizes are whole sectors.
SECTOR = 512

#: New disk files are private to corral's user: they hold guest data.
DISK_MODE = 0o600


@dataclass(frozen=True)
class DiskUsage:
    """How big a disk is to its guest and on the host."""

    #: Virtual size: what the guest sees.
    provisioned: int
    #: Bytes allocated on the host for this file alone (not its backing file).
    used: int


def _check_size(size: int, field: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidInput(field, f"must be a positive number of bytes, not {size!r}")
    if size % SECTOR:
        raise InvalidInput(field, f"{size} bytes is not a multiple of {SECTOR}")


def _reserve(dest: Path) -> None:
    """Create ``dest`` empty, failing if it exists, so qemu-img never overwrites a disk."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, DISK_MODE)
    except FileExistsError as exc:
        raise AlreadyExists("disk", str(dest)) from exc
    os.close(fd)


def _base_size(base: Path) -> int:
    shown = str(base)
    try:
        with base.open("rb") as file:
            head = file.read(QCOW2_HEADER_BYTES)
    except FileNotFoundError as exc:
        raise ImageError(shown, "does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageError(shown, "is a directory, not an image file") from exc
    try:
        return parse_qcow2_header(head).size
    except ValueError as exc:
        raise ImageError(shown, f"not a qcow2 image: {exc}") from exc


def create_clone(base: Path, dest: Path, size: int | None = None) -> None:
    """Create a VM disk as a qcow2 overlay on ``base``; constant time whatever its size.

    :param base: a catalogue image (qcow2); stored in the overlay by absolute name.
    :param dest: the new disk; must not exist.
    :param size: virtual size in bytes; ``None`` or the base's size keeps it, larger grows it.
    :raise InvalidInput: ``size`` is smaller than the base's, not positive, or not whole sectors.
    :raise ImageError: ``base`` is missing or not a qcow2.
    :raise AlreadyExists: ``dest`` exists.
    :raise ToolError: qemu-img failed.
    """
    base_abs = base.absolute()
    base_size = _base_size(base_abs)
    overlay_size = None
    if size is not None:
        _check_size(size)
        if size < base_size:
            raise InvalidInput(
                "size",
                f"{format_size(size)} cannot shrink below the image's {format_size(base_size)}",
            )
        if size > base_size:
            overlay_size = size
    _reserve(dest)
    try:
        img.create_overlay(dest, base_abs, "qcow2", overlay_size)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def create_blank(dest: Path, size: int) -> None:
    """Create an empty qcow2 VM disk.

    :param dest: the new disk; must not exist.
    :param size: virtual size in bytes, a multiple of 512.
    :raise InvalidInput: ``size`` is not positive or not whole sectors.
    :raise AlreadyExists: ``dest`` exists.
    :raise ToolError: qemu-img failed.
    """
    _check_size(size)
    _reserve(dest)
    try:
        img.create(dest, "qcow2", size)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def disk_usage(path: Path, fmt: DiskFormat | None = None) -> DiskUsage:
    """Virtual size and host allocation of a disk file, without qemu-img.

    :param path: the disk.
    :param fmt: its format; ``None`` reads it from the magic (corral's own files only: this
        is for display and never decides how a file is opened).
    :raise NotFound: no such file.
    :raise ImageError: it is a directory, or a qcow2 with an unreadable header.
    """
    try:
        with path.open("rb") as file:
            st = os.fstat(file.fileno())
            head = file.read(QCOW2_HEADER_BYTES)
    except FileNotFoundError as exc:
        raise NotFound("disk", str(path)) from exc
    except IsADirectoryError as exc:
        raise ImageError(str(path), "is a directory, not a disk") from exc
    if fmt is None:
        fmt = "qcow2" if head.startswith(QCOW2_MAGIC) else "raw"
    if fmt == "raw":
        provisioned = st.st_size
    else:
        try:
            provisioned = parse_qcow2_header(head).size
        except ValueError as exc:
            raise ImageError(str(path), f"not a qcow2 disk: {exc}") from exc
    return DiskUsage(provisioned=provisioned, used=st.st_blocks * 512)


def remove_disk(path: Path) -> None:
    """Delete a disk file; a missing file is not an error.

    :param path: the disk.
    :raise ImageError: ``path`` is a directory or not a regular file.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(str(path), "is not a regular file; not removed")
    path.unlink(missing_ok=True)
