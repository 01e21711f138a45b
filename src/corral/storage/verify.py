"""Verifying an untrusted file before anything converts it.

A file a user hands us may be crafted; :func:`verify_image` (and :func:`verify_source`, which
the import pipeline in :mod:`corral.storage.images` runs on the file it then converts) checks:

* **the format**: the magic is read by us (:mod:`corral.storage.formats`), a declared format
  that disagrees with it is refused, and qemu-img always gets the format with ``-f``;
* **references to other files**: qcow2 backing and data files (from our own reading of the
  header, before qemu-img opens anything), VMDK descriptors and extents, any backing file
  qemu-img reports;
* **the metadata**: ``qemu-img info`` and ``check`` run under limits (:mod:`corral.qemu.img`)
  and ``check`` must find no corruption.

The file is opened once (:func:`open_source`); qemu-img reads that open file through
``/proc/self/fd/N``, so renaming another file into place after the checks changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ImageError, ToolError
from corral.qemu import img
from corral.qemu.img_parse import CheckResult, ImageInfo
from corral.storage.formats import (
    HEAD_BYTES,
    QCOW2_HEADER_BYTES,
    SINGLE_FILE_VMDK,
    ImportFormat,
    Qcow2Header,
    descriptor_create_type,
    foreign_format,
    foreign_reason,
    is_vmdk_descriptor,
    parse_qcow2_header,
    sniff_format,
    validate_format,
)

# --- reading a file's head ------------------------------------------------------------------


def read_qcow2_header(path: Path) -> Qcow2Header:
    """Read and parse a qcow2 file's header (104 bytes, no qemu-img).

    :param path: the file.
    :raise OSError: it cannot be read.
    :raise ValueError: it is not a qcow2 file.
    """
    with path.open("rb") as file:
        return parse_qcow2_header(file.read(QCOW2_HEADER_BYTES))


def detect_format(path: Path) -> ImportFormat:
    """Detect a file's format from its magic bytes (never by asking qemu-img).

    :param path: the file.
    :raise ImageError: it cannot be read, or it is in a format corral does not import.
    """
    try:
        with path.open("rb") as file:
            head = file.read(HEAD_BYTES)
    except OSError as exc:
        raise ImageError(str(path), f"cannot read it: {exc.strerror}") from exc
    foreign = foreign_format(head)
    if foreign is not None:
        raise ImageError(str(path), foreign_reason(foreign))
    return sniff_format(head)


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedImage:
    """A file that passed every check and may be converted."""

    #: Its format, as detected and (if given) declared.
    format: ImportFormat
    #: What qemu-img says about it.
    info: ImageInfo
    #: What ``qemu-img check`` found (``supported`` is false for raw).
    check: CheckResult


@dataclass(frozen=True)
class Source:
    """An untrusted file, opened once; qemu-img reads it as :attr:`fd_path`."""

    #: The name the user gave, for messages.
    shown: str
    fd: int
    size: int

    @property
    def fd_path(self) -> str:
        """The name qemu-img opens: the open descriptor, not the user's name."""
        return f"/proc/self/fd/{self.fd}"

    def refuse(self, reason: str) -> ImageError:
        """The error refusing this file, with :attr:`fd_path` replaced by the user's name."""
        return ImageError(self.shown, reason.replace(self.fd_path, self.shown))

    def tool_reason(self, exc: ToolError) -> str:
        """The last line of qemu-img's error output, for a refusal message."""
        lines = [line for line in exc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"status {exc.exitcode}"
        return last.removeprefix("qemu-img: ")


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[Source]:
    """Open an untrusted file once, for reading, and close it on exit.

    :param path: the user's file.
    :raise ImageError: it is missing, unreadable, a directory, not a regular file, or empty.
    """
    shown = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ImageError(shown, "does not exist") from exc
    except OSError as exc:
        raise ImageError(shown, f"cannot open it: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(shown, "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(shown, "is not a regular file (a device, pipe or socket)")
        if st.st_size == 0:
            raise ImageError(shown, "is empty")
        yield Source(shown=shown, fd=fd, size=st.st_size)
    finally:
        os.close(fd)


def _verify_qcow2_header(source: Source, head: bytes) -> None:
    try:
        header = parse_qcow2_header(head)
    except ValueError as exc:
        raise source.refuse(f"corrupt qcow2 header: {exc}") from exc
    if header.has_backing_file:
        raw_name = os.pread(source.fd, header.backing_file_size, header.backing_file_offset)
        name = raw_name.decode(errors="replace")
        raise source.refuse(f"it refers to a backing file {name!r}; import a standalone image")
    if header.has_data_file:
        raise source.refuse("its data is in an external data file; import a standalone image")
    if header.encrypted:
        raise source.refuse("it is encrypted; import an unencrypted image")
    if header.corrupt:
        raise source.refuse("QEMU marked it corrupt")


def _verify_info(source: Source, fmt: ImportFormat, info: ImageInfo) -> None:
    if info.format != fmt:
        raise source.refuse(f"qemu-img reads it as {info.format}, not {fmt}")
    if info.backing_filename is not None:
        raise source.refuse(
            f"it refers to a backing file {info.backing_filename!r}; import a standalone image"
        )
    if info.data_file is not None:
        raise source.refuse(
            f"its data is in an external data file {info.data_file!r}; import a standalone image"
        )
    if info.encrypted:
        raise source.refuse("it is encrypted; import an unencrypted image")
    if info.corrupt:
        raise source.refuse("QEMU marked it corrupt")
    if fmt == "vmdk":
        if info.vmdk_create_type not in SINGLE_FILE_VMDK:
            raise source.refuse(
                f"its VMDK create type {info.vmdk_create_type!r} keeps data in other files; "
                f"corral imports {' and '.join(sorted(SINGLE_FILE_VMDK))} VMDKs"
            )
        if not info.vmdk_extents:
            raise source.refuse("its VMDK has no extents")
        for extent in info.vmdk_extents:
            if extent.filename != source.fd_path:
                raise source.refuse(f"its VMDK extent {extent.filename!r} is another file")
    if info.virtual_size <= 0:
        raise source.refuse("its virtual size is 0")


def verify_source(source: Source, declared: ImportFormat | None) -> VerifiedImage:
    """Run every check on an opened file: magic, header, ``qemu-img info`` and ``check``.

    :param source: the file, from :func:`open_source`.
    :param declared: the format the user says it is in; ``None`` to take the detected one.
    :raise ImageError: it is refused; the message names the user's file, not the descriptor.
    """
    head = os.pread(source.fd, HEAD_BYTES, 0)
    foreign = foreign_format(head)
    if foreign is not None:
        raise source.refuse(foreign_reason(foreign))
    fmt = sniff_format(head)
    if declared is not None and declared != fmt:
        raise source.refuse(
            f"declared {declared} but its header says {fmt}; "
            f"corral does not open an image as another format than its header says"
        )
    if is_vmdk_descriptor(head):
        create_type = descriptor_create_type(head) or "unknown"
        raise source.refuse(
            f"it is a VMDK descriptor (create type {create_type}): the disk's data is in other "
            f"files; import a single-file VMDK ({' or '.join(sorted(SINGLE_FILE_VMDK))})"
        )
    if fmt == "qcow2":
        _verify_qcow2_header(source, head)
    try:
        info = img.info(source.fd_path, fmt, pass_fds=(source.fd,))
    except ToolError as exc:
        raise source.refuse(f"not a valid {fmt} image: {source.tool_reason(exc)}") from exc
    _verify_info(source, fmt, info)
    try:
        result = img.check(source.fd_path, fmt, pass_fds=(source.fd,))
    except ToolError as exc:
        raise source.refuse(f"qemu-img check failed: {source.tool_reason(exc)}") from exc
    if result.corruptions:
        raise source.refuse(f"it is corrupt: qemu-img check found {result.corruptions} errors")
    if result.check_errors:
        raise source.refuse(f"qemu-img check could not complete ({result.check_errors} errors)")
    return VerifiedImage(format=fmt, info=_renamed(info, source), check=result)


def _renamed(info: ImageInfo, source: Source) -> ImageInfo:
    """``info`` with the user's file name in place of the ``/proc/self/fd`` one."""
    extents = tuple(
        dataclasses.replace(extent, filename=source.shown)
        if extent.filename == source.fd_path
        else extent
        for extent in info.vmdk_extents
    )
    return dataclasses.replace(info, filename=source.shown, vmdk_extents=extents)


def verify_image(path: Path, fmt: str | None = None) -> VerifiedImage:
    """Check that a file is an image corral may import, without importing it.

    :param path: the file.
    :param fmt: the format the user says it is; ``None`` to detect it.
    :raise InvalidInput: ``fmt`` is not one of :data:`IMPORT_FORMATS`.
    :raise ImageError: the file is missing, not a regular file, empty, in another format than
        declared, refers to other files, is encrypted or corrupt.
    :raise HostError: qemu-img or prlimit is missing.
    """
    declared = validate_format(fmt)
    with open_source(path) as source:
        return verify_source(source, declared)
