"""The reference guest's kernel: a bzImage's payload as a vmlinux, and its PVH entry note.

Pure byte parsing, no files and no processes: :func:`extract_vmlinux` finds the compressed
payload through the bzImage's setup header and decompresses it in-process; :func:`pvh_entry`
reads the PVH entry point from the ELF notes (:func:`~corral.guest.elf.elf_notes`) that QEMU
needs to boot the vmlinux directly.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from corral.errors import GuestBuildError
from corral.guest.elf import elf_notes

_BZ_SETUP_SECTS = 0x1F1
_BZ_MAGIC = 0x202
_BZ_VERSION = 0x206
#: payload_offset, then payload_length (both u32).
_BZ_PAYLOAD_OFFSET = 0x248
#: Boot protocol 2.08 added payload_offset/payload_length.
_BZ_MIN_VERSION = 0x0208

_XEN_ELFNOTE_PHYS32_ENTRY = 18


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage.

    The payload is found through the setup header (boot protocol 2.08 or later) and
    decompressed in-process (xz, lzma, gzip or bzip2).

    :param bzimage: the bzImage file's content.
    :return: the vmlinux ELF image.
    :raise GuestBuildError: not a bzImage, an unsupported compression, or not an ELF inside.
    """
    if len(bzimage) < 0x300 or bzimage[_BZ_MAGIC : _BZ_MAGIC + 4] != b"HdrS":
        raise GuestBuildError("the kernel is not a bzImage (no HdrS setup header)")
    (version,) = struct.unpack_from("<H", bzimage, _BZ_VERSION)
    if version < _BZ_MIN_VERSION:
        raise GuestBuildError(f"the bzImage's boot protocol {version:#x} is older than 2.08")
    setup_sects = bzimage[_BZ_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", bzimage, _BZ_PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    if len(payload) != length or length == 0:
        raise GuestBuildError("the bzImage's payload lies outside the file")
    vmlinux = _decompress(payload)
    if vmlinux[:4] != b"\x7fELF":
        raise GuestBuildError("the bzImage's payload is not an ELF image")
    return vmlinux


def _decompress(payload: bytes) -> bytes:
    """Decompress a kernel payload; trailing bytes (the appended size) are ignored."""
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        if payload.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload)
        if payload.startswith(b"BZh"):
            return bz2.BZ2Decompressor().decompress(payload)
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise GuestBuildError(f"cannot decompress the bzImage's payload: {exc}") from exc
    raise GuestBuildError(
        f"the bzImage's payload uses an unsupported compression (magic {payload[:6].hex()})"
    )


def pvh_entry(elf: bytes) -> int | None:
    """The 32-bit PVH entry point of a kernel (its XEN_ELFNOTE_PHYS32_ENTRY note), if any.

    :param elf: the vmlinux ELF image.
    :return: the physical entry address, or ``None`` without the note.
    :raise GuestBuildError: not a 64-bit little-endian ELF.
    """
    for name, note_type, desc in elf_notes(elf):
        if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            return int.from_bytes(desc[:8] if len(desc) >= 8 else desc[:4], "little")
    return None
