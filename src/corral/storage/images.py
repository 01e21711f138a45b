"""Importing an untrusted file into the image catalogue's directory.

An image a user hands us may be crafted. The dangers, and what corral does about them:

* **Format confusion.** A raw disk whose guest wrote a qcow2 header at sector 0 becomes, if a
  tool guesses its format, a qcow2 that points at host files. We read the magic ourselves
  (:func:`~corral.storage.formats.sniff_format`), refuse a declared format that disagrees with
  it, and always pass the format to qemu-img with ``-f``.
* **References to other files.** qcow2 backing files and external data files, VMDK descriptors
  and extents, any backing file qemu-img reports: importing would copy host files (say
  ``/etc/shadow``) into the image. They are refused, qcow2's and VMDK descriptors' from our own
  reading of the header before qemu-img opens anything.
* **Crafted metadata.** qemu-img runs under address-space and CPU limits
  (:mod:`corral.qemu.img`); ``qemu-img check`` must find no corruption.
* **Swapped files.** The source is opened once; qemu-img reads that open file through
  ``/proc/self/fd/N``, so renaming another file into place after the checks changes nothing.

The checks are in :mod:`corral.storage.verify`, the pure format reading they rely on in
:mod:`corral.storage.formats`; both are re-exported here. This module writes files:
:func:`import_image` always writes a fresh qcow2 with ``qemu-img convert`` (a qcow2 source
too): no backing file, no data file, no snapshots, no bitmaps. It appears under its final name
only when complete, synced and read-only. :func:`convert_file` runs the same pipeline to any of
the four formats, for ``corral image convert``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from corral.errors import AlreadyExists, HostError, ToolError
from corral.qemu import img
from corral.qemu.img_parse import ImageInfo
from corral.qemu.runner import ProgressCallback
from corral.storage.formats import (
    FOREIGN_MAGIC,
    HEAD_BYTES,
    IMPORT_FORMATS,
    QCOW2_HEADER_BYTES,
    QCOW2_MAGIC,
    SINGLE_FILE_VMDK,
    VDI_SIGNATURE,
    VDI_SIGNATURE_OFFSET,
    VMDK_DESCRIPTOR_MAGIC,
    VMDK_SPARSE_MAGIC,
    ImportFormat,
    Qcow2Header,
    foreign_format,
    is_vmdk_descriptor,
    parse_qcow2_header,
    sniff_format,
    validate_format,
)
from corral.storage.verify import (
    VerifiedImage,
    detect_format,
    open_source,
    read_qcow2_header,
    verify_image,
    verify_source,
)
from corral.units import format_size

__all__ = [
    "FOREIGN_MAGIC",
    "HEAD_BYTES",
    "IMPORT_FORMATS",
    "QCOW2_HEADER_BYTES",
    "QCOW2_MAGIC",
    "SINGLE_FILE_VMDK",
    "VDI_SIGNATURE",
    "VDI_SIGNATURE_OFFSET",
    "VMDK_DESCRIPTOR_MAGIC",
    "VMDK_SPARSE_MAGIC",
    "ConvertedImage",
    "ImportFormat",
    "ImportedImage",
    "Qcow2Header",
    "VerifiedImage",
    "convert_file",
    "detect_format",
    "foreign_format",
    "import_image",
    "is_vmdk_descriptor",
    "parse_qcow2_header",
    "read_qcow2_header",
    "sniff_format",
    "validate_format",
    "verify_image",
]


@dataclass(frozen=True)
class ImportedImage:
    """A file imported into the catalogue's directory."""

    #: The new qcow2 file (read-only).
    path: Path
    #: The format the source was in.
    source_format: ImportFormat
    #: Virtual size in bytes.
    virtual_size: int
    #: Bytes the new file occupies on the host.
    actual_size: int
    #: SHA-256 of the new file, hex.
    sha256: str


@dataclass(frozen=True)
class ConvertedImage:
    """A verified file converted to a new file in any of :data:`IMPORT_FORMATS`."""

    path: Path
    source_format: ImportFormat
    #: The new file's format.
    format: ImportFormat
    virtual_size: int
    actual_size: int


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(path: Path, digest: bool) -> str | None:
    """fsync ``path``; with ``digest``, also return its SHA-256 (read while syncing)."""
    with path.open("rb") as file:
        hexdigest = None
        if digest:
            hasher = hashlib.sha256()
            while chunk := file.read(1024 * 1024):
                hasher.update(chunk)
            hexdigest = hasher.hexdigest()
        os.fsync(file.fileno())
    return hexdigest


def _publish(tmp: Path, dest: Path, kind: str) -> None:
    """Give ``tmp`` the name ``dest`` atomically, never replacing an existing ``dest``."""
    try:
        os.link(tmp, dest)
    except FileExistsError as exc:
        raise AlreadyExists(kind, str(dest)) from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A file system without hard links: rename (the caller checked dest is free).
        tmp.rename(dest)
        return
    tmp.unlink()


@dataclass(frozen=True)
class _Written:
    verified: VerifiedImage
    info: ImageInfo
    sha256: str | None


def _write(
    src: Path,
    dest: Path,
    declared: ImportFormat | None,
    to: ImportFormat,
    progress: ProgressCallback | None,
    *,
    kind: str,
    mode: int | None,
    digest: bool,
) -> _Written:
    """Verify ``src`` and convert it to ``dest`` through a temporary file; the shared pipeline.

    :param mode: permission bits of the result; ``None`` takes the source's (read/write bits).
    """
    if dest.exists():
        raise AlreadyExists(kind, str(dest))
    with open_source(src) as source:
        verified = verify_source(source, declared)
        try:
            # The data to copy; a good estimate for every output format (raw stays sparse).
            needed = img.measure(source.fd_path, verified.format, pass_fds=(source.fd,)).required
        except ToolError as exc:
            raise source.refuse(f"qemu-img measure failed: {source.tool_reason(exc)}") from exc
        free = shutil.disk_usage(dest.parent).free
        if needed > free:
            raise HostError(
                f"not enough space in {dest.parent}: the image needs {format_size(needed)}, "
                f"{format_size(free)} is free"
            )
        if mode is None:
            mode = stat.S_IMODE(os.fstat(source.fd).st_mode) & 0o666
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                img.convert(
                    source.fd_path, verified.format, tmp, to, progress, pass_fds=(source.fd,)
                )
            except ToolError as exc:
                if "while reading" in exc.stderr:
                    raise source.refuse(f"cannot be read: {source.tool_reason(exc)}") from exc
                raise
            info = img.info(tmp, to)
            sha256 = _sync(tmp, digest)
            tmp.chmod(mode)
            _publish(tmp, dest, kind)
            _sync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return _Written(verified=verified, info=info, sha256=sha256)


def _on_host(info: ImageInfo, path: Path) -> int:
    return info.actual_size if info.actual_size is not None else path.stat().st_blocks * 512


def import_image(
    src: Path,
    dest: Path,
    fmt: str | None = None,
    progress: ProgressCallback | None = None,
) -> ImportedImage:
    """Verify an untrusted file and convert it into a standalone, read-only qcow2 at ``dest``.

    A qcow2 source is converted too, so the result never has a backing file, a data file,
    snapshots or bitmaps. The conversion writes a temporary file in ``dest``'s directory,
    syncs it, makes it read-only (0444), then links it to its name; on any failure or
    interruption (``KeyboardInterrupt`` included) the temporary file is removed.

    :param src: the user's file.
    :param dest: the new image file; its directory must exist.
    :param fmt: the format the user says ``src`` is in; ``None`` to detect it.
    :param progress: called with the fraction of the conversion done (0.0 to 1.0).
    :raise InvalidInput: ``fmt`` is not one of :data:`IMPORT_FORMATS`.
    :raise ImageError: the file is refused (see :func:`verify_image`) or unreadable.
    :raise AlreadyExists: ``dest`` exists.
    :raise HostError: not enough free space in ``dest``'s directory, or a missing tool.
    :raise ToolError: qemu-img failed writing the new image.
    """
    declared = validate_format(fmt)
    written = _write(
        src, dest, declared, "qcow2", progress, kind="image file", mode=0o444, digest=True
    )
    assert written.sha256 is not None
    return ImportedImage(
        path=dest,
        source_format=written.verified.format,
        virtual_size=written.info.virtual_size,
        actual_size=_on_host(written.info, dest),
        sha256=written.sha256,
    )


def convert_file(
    src: Path,
    dest: Path,
    to: str = "qcow2",
    fmt: str | None = None,
    progress: ProgressCallback | None = None,
) -> ConvertedImage:
    """Verify an untrusted file like :func:`import_image` and convert it to ``to`` at ``dest``.

    The new file gets the source's read/write permission bits; it appears only when complete.

    :param src: the file to read.
    :param dest: the file to write; must not exist.
    :param to: the new file's format, one of :data:`IMPORT_FORMATS` (vmdk: monolithicSparse).
    :param fmt: the format the user says ``src`` is in; ``None`` to detect it.
    :param progress: called with the fraction of the conversion done (0.0 to 1.0).
    :raise InvalidInput: ``fmt`` or ``to`` is not one of :data:`IMPORT_FORMATS`.
    :raise ImageError: the file is refused (see :func:`verify_image`) or unreadable.
    :raise AlreadyExists: ``dest`` exists.
    :raise HostError: not enough free space, or a missing tool.
    :raise ToolError: qemu-img failed writing the new file.
    """
    declared = validate_format(fmt)
    target = validate_format(to, "to")
    assert target is not None
    written = _write(src, dest, declared, target, progress, kind="file", mode=None, digest=False)
    return ConvertedImage(
        path=dest,
        source_format=written.verified.format,
        format=target,
        virtual_size=written.info.virtual_size,
        actual_size=_on_host(written.info, dest),
    )
