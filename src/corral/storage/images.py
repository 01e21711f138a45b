"""Importing an untrusted file into the image catalogue's directory.

An image a user hands us may be crafted. The dangers, and what this module does about them:

* **Format confusion.** A raw disk whose guest wrote a qcow2 header at sector 0 becomes, if a
  tool guesses its format, a qcow2 that points at host files. We read the magic ourselves
  (:func:`sniff_format`), refuse a declared format that disagrees with it, and always pass the
  format to qemu-img with ``-f``.
* **References to other files.** qcow2 backing files and external data files, VMDK descriptors
  and extents, any backing file qemu-img reports: importing would copy host files (say
  ``/etc/shadow``) into the image. They are refused, qcow2's and VMDK descriptors' from our own
  reading of the header before qemu-img opens anything.
* **Crafted metadata.** qemu-img runs under address-space and CPU limits
  (:mod:`corral.qemu.img`); ``qemu-img check`` must find no corruption.
* **Swapped files.** The source is opened once; qemu-img reads that open file through
  ``/proc/self/fd/N``, so renaming another file into place after the checks changes nothing.

:func:`import_image` always writes a fresh qcow2 with ``qemu-img convert`` (a qcow2 source
too): no backing file, no data file, no snapshots, no bitmaps. It appears under its final name
only when complete, synced and read-only. :func:`convert_file` runs the same pipeline to any of
the four formats, for ``corral image convert``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from corral.errors import AlreadyExists, HostError, ImageError, InvalidInput, ToolError
from corral.qemu import img
from corral.qemu.img import CheckResult, ImageInfo, ProgressCallback
from corral.units import format_size

#: The formats corral imports.
ImportFormat = Literal["raw", "qcow2", "vmdk", "vdi"]
IMPORT_FORMATS: Final[tuple[ImportFormat, ...]] = get_args(ImportFormat)

QCOW2_MAGIC: Final = b"QFI\xfb"
VMDK_SPARSE_MAGIC: Final = b"KDMV"
VMDK_DESCRIPTOR_MAGIC: Final = b"# Disk DescriptorFile"
VDI_SIGNATURE_OFFSET: Final = 0x40
VDI_SIGNATURE: Final = struct.pack("<I", 0xBEDA107F)

#: Formats qemu knows that corral does not import, by their magic at offset 0. A raw disk
#: does not start with these, so refusing (rather than importing the container as raw bytes)
#: is the helpful answer.
FOREIGN_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"vhdxfile", "VHDX"),
    (b"conectix", "VHD (dynamic)"),
    (b"QFI\x00", "QED"),
    (b"COWD", "VMware ESX COWD (VMDK version 3)"),
    (b"WithoutFreeSpace", "Parallels"),
    (b"WithouFreSpacExt", "Parallels"),
    (b"Bochs Virtual HD Image", "Bochs"),
)

#: How much of the start of a file :func:`sniff_format` looks at.
HEAD_BYTES: Final = 4096

#: VMDK create types whose data is in the one file.
SINGLE_FILE_VMDK: Final = frozenset({"monolithicSparse", "streamOptimized"})

# qcow2 header: big-endian; version 2 has 72 bytes, version 3 adds 32 more.
_QCOW2_V2: Final = struct.Struct(">4sIQIIQIIQQIIQ")
_QCOW2_V3_EXTRA: Final = struct.Struct(">QQQII")
QCOW2_HEADER_BYTES: Final = _QCOW2_V2.size + _QCOW2_V3_EXTRA.size

_INCOMPAT_DIRTY: Final = 1 << 0
_INCOMPAT_CORRUPT: Final = 1 << 1
_INCOMPAT_DATA_FILE: Final = 1 << 2

#: qcow2 allows backing file names up to 1023 bytes.
_MAX_BACKING_NAME: Final = 1023


@dataclass(frozen=True)
class Qcow2Header:
    """The fields of a qcow2 header corral reads without qemu-img."""

    version: int
    #: Offset of the backing file name; 0 means no backing file.
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    #: Virtual size in bytes.
    size: int
    #: 0 none, 1 AES (legacy), 2 LUKS.
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    nb_snapshots: int
    #: Version 3 only; 0 for version 2.
    incompatible_features: int = 0

    @property
    def cluster_size(self) -> int:
        """Cluster size in bytes."""
        return 1 << self.cluster_bits

    @property
    def has_backing_file(self) -> bool:
        """The image names a backing file."""
        return self.backing_file_offset != 0

    @property
    def has_data_file(self) -> bool:
        """The guest data is in an external data file."""
        return bool(self.incompatible_features & _INCOMPAT_DATA_FILE)

    @property
    def encrypted(self) -> bool:
        """The image is encrypted (AES or LUKS)."""
        return self.crypt_method != 0

    @property
    def dirty(self) -> bool:
        """Refcounts may be stale (lazy refcounts, not closed cleanly)."""
        return bool(self.incompatible_features & _INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        """QEMU marked the image corrupt."""
        return bool(self.incompatible_features & _INCOMPAT_CORRUPT)


def parse_qcow2_header(data: bytes) -> Qcow2Header:
    """Parse the start of a qcow2 file.

    :param data: at least the first 72 bytes (104 for version 3).
    :raise ValueError: not a qcow2 header, an unknown version, or impossible values.
    """
    if len(data) < _QCOW2_V2.size:
        raise ValueError(f"qcow2 header truncated: {len(data)} bytes")
    (
        magic,
        version,
        backing_offset,
        backing_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_offset,
        refcount_offset,
        _refcount_clusters,
        nb_snapshots,
        _snapshots_offset,
    ) = _QCOW2_V2.unpack_from(data)
    if magic != QCOW2_MAGIC:
        raise ValueError("no qcow2 magic")
    if version not in (2, 3):
        raise ValueError(f"qcow2 version {version} is unknown")
    if not 9 <= cluster_bits <= 21:
        raise ValueError(f"qcow2 cluster bits {cluster_bits} out of range 9..21")
    incompatible = 0
    if version == 3:
        if len(data) < QCOW2_HEADER_BYTES:
            raise ValueError(f"qcow2 version 3 header truncated: {len(data)} bytes")
        incompatible = _QCOW2_V3_EXTRA.unpack_from(data, _QCOW2_V2.size)[0]
    if backing_offset and not 0 < backing_size <= _MAX_BACKING_NAME:
        raise ValueError(f"qcow2 backing file name length {backing_size} out of range")
    return Qcow2Header(
        version=version,
        backing_file_offset=backing_offset,
        backing_file_size=backing_size,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt_method,
        l1_size=l1_size,
        l1_table_offset=l1_offset,
        refcount_table_offset=refcount_offset,
        nb_snapshots=nb_snapshots,
        incompatible_features=incompatible,
    )


def read_qcow2_header(path: Path) -> Qcow2Header:
    """Read and parse a qcow2 file's header (104 bytes, no qemu-img).

    :param path: the file.
    :raise OSError: it cannot be read.
    :raise ValueError: it is not a qcow2 file.
    """
    with path.open("rb") as file:
        return parse_qcow2_header(file.read(QCOW2_HEADER_BYTES))


def foreign_format(head: bytes) -> str | None:
    """The name of an image format corral does not import, if ``head`` starts with its magic.

    :param head: the start of the file.
    """
    for magic, name in FOREIGN_MAGIC:
        if head.startswith(magic):
            return name
    return None


def sniff_format(head: bytes) -> ImportFormat:
    """The format the start of a file says it is; ``raw`` when it says nothing.

    :param head: the first bytes of the file (:data:`HEAD_BYTES` is plenty).
    """
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    if head.startswith((VMDK_SPARSE_MAGIC, VMDK_DESCRIPTOR_MAGIC)):
        return "vmdk"
    if head[VDI_SIGNATURE_OFFSET : VDI_SIGNATURE_OFFSET + 4] == VDI_SIGNATURE:
        return "vdi"
    return "raw"


def is_vmdk_descriptor(head: bytes) -> bool:
    """A VMDK text descriptor: the disk's data is in the extent files it names.

    :param head: the start of the file.
    """
    return head.startswith(VMDK_DESCRIPTOR_MAGIC)


def _descriptor_create_type(head: bytes) -> str | None:
    match = re.search(rb'^\s*createType\s*=\s*"([A-Za-z0-9]{1,40})"', head, re.MULTILINE)
    return match.group(1).decode() if match else None


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
        raise ImageError(str(path), _foreign_reason(foreign))
    return sniff_format(head)


def _foreign_reason(name: str) -> str:
    allowed = ", ".join(IMPORT_FORMATS)
    return f"it is a {name} image; corral imports {allowed}: convert it to qcow2 first"


def validate_format(fmt: str | None, field: str = "format") -> ImportFormat | None:
    """Check a user-given format name.

    :param fmt: the name, or ``None`` (detect it).
    :param field: the field named in the error.
    :raise InvalidInput: not one of :data:`IMPORT_FORMATS`.
    """
    if fmt is None:
        return None
    for allowed in IMPORT_FORMATS:
        if fmt == allowed:
            return allowed
    raise InvalidInput(field, f"{fmt!r} is not supported; use one of {', '.join(IMPORT_FORMATS)}")


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
class _Source:
    """An untrusted file, opened once; qemu-img reads it as :attr:`fd_path`."""

    #: The name the user gave, for messages.
    shown: str
    fd: int
    size: int

    @property
    def fd_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def refuse(self, reason: str) -> ImageError:
        return ImageError(self.shown, reason.replace(self.fd_path, self.shown))

    def tool_reason(self, exc: ToolError) -> str:
        lines = [line for line in exc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"status {exc.exitcode}"
        return last.removeprefix("qemu-img: ")


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
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
        yield _Source(shown=shown, fd=fd, size=st.st_size)
    finally:
        os.close(fd)


def _verify_qcow2_header(source: _Source, head: bytes) -> None:
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


def _verify_info(source: _Source, fmt: ImportFormat, info: ImageInfo) -> None:
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


def _verify(source: _Source, declared: ImportFormat | None) -> VerifiedImage:
    head = os.pread(source.fd, HEAD_BYTES, 0)
    foreign = foreign_format(head)
    if foreign is not None:
        raise source.refuse(_foreign_reason(foreign))
    fmt = sniff_format(head)
    if declared is not None and declared != fmt:
        raise source.refuse(
            f"declared {declared} but its header says {fmt}; "
            f"corral does not open an image as another format than its header says"
        )
    if is_vmdk_descriptor(head):
        create_type = _descriptor_create_type(head) or "unknown"
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


def _renamed(info: ImageInfo, source: _Source) -> ImageInfo:
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
    with _open_source(path) as source:
        return _verify(source, declared)


# --- import and conversion -----------------------------------------------------------------


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
    with _open_source(src) as source:
        verified = _verify(source, declared)
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
