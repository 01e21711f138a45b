"""Image formats read from a file's first bytes: pure, no I/O.

corral never lets qemu-img guess a format, so it reads the magic itself
(:func:`sniff_format`), names the formats it refuses (:func:`foreign_format`), spots VMDK text
descriptors (:func:`is_vmdk_descriptor`) and parses the qcow2 header
(:func:`parse_qcow2_header`) to find backing files, external data files and encryption before
qemu-img opens anything. Every function here takes bytes already read; the callers read them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final, Literal, get_args

from corral.errors import InvalidInput

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


def descriptor_create_type(head: bytes) -> str | None:
    """The ``createType`` a VMDK text descriptor declares, if any.

    :param head: the start of the descriptor.
    """
    match = re.search(rb'^\s*createType\s*=\s*"([A-Za-z0-9]{1,40})"', head, re.MULTILINE)
    return match.group(1).decode() if match else None


def foreign_reason(name: str) -> str:
    """Why a file in the foreign format ``name`` is refused, and what to do instead."""
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
