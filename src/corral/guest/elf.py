"""Reading 64-bit little-endian ELF files: program headers, sections, notes, dynamic linking.

Pure byte parsing, no files and no processes, for the few things the guest build reads from
an ELF file: :func:`elf_notes` (the kernel's PVH entry note), :func:`elf_sections` (a kernel
module's ``.modinfo`` and ``__mcount_loc``) and :func:`dynamic_linking` (the program
interpreter and the ``DT_NEEDED`` libraries of a program or a shared library, to copy only
the libraries it loads). Every reader raises :class:`~corral.errors.GuestBuildError` for what
is not a 64-bit little-endian ELF file or points outside it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from corral.errors import GuestBuildError

_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3
_PT_NOTE = 4

_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_STRSZ = 10
_DT_SONAME = 14
_DT_RPATH = 15
_DT_RUNPATH = 29

#: ``Elf64_Dyn``: d_tag (signed), d_val.
_DYN = struct.Struct("<qQ")
#: ``Elf64_Phdr``: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align.
_PHDR = struct.Struct("<IIQQQQQQ")
#: The start of an ``Elf64_Shdr``: sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size.
_SHDR = struct.Struct("<IIQQQQ")


@dataclass(frozen=True)
class ProgramHeader:
    """One entry of an ELF file's program header table (a segment)."""

    #: ``p_type`` (``PT_LOAD`` is 1, ``PT_DYNAMIC`` 2, ``PT_INTERP`` 3, ``PT_NOTE`` 4).
    type: int
    #: Where the segment's bytes start in the file.
    offset: int
    #: Where the segment is mapped in memory.
    vaddr: int
    #: How many of its bytes are in the file.
    filesz: int


@dataclass(frozen=True)
class DynamicLinking:
    """What the dynamic loader reads from an ELF file to load it and its libraries."""

    #: The ``PT_INTERP`` path (``/lib64/ld-linux-x86-64.so.2``); ``None`` for a library or a
    #: static program.
    interpreter: str | None
    #: The ``DT_NEEDED`` entries in order (``libc.so.6``): the libraries to load.
    needed: tuple[str, ...]
    #: The ``DT_SONAME`` of a shared library (``libz.so.1``).
    soname: str | None
    #: The directories of ``DT_RUNPATH`` (or, without it, of the older ``DT_RPATH``).
    runpath: tuple[str, ...]


def _check(elf: bytes) -> None:
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise GuestBuildError("not a 64-bit little-endian ELF file")


def program_headers(elf: bytes) -> list[ProgramHeader]:
    """The program header table of an ELF file.

    :param elf: the file's content.
    :return: the segments in table order.
    :raise GuestBuildError: not a 64-bit little-endian ELF file, or a table outside it.
    """
    _check(elf)
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    if phnum and (phentsize < _PHDR.size or phoff + phnum * phentsize > len(elf)):
        raise GuestBuildError("the ELF file's program header table lies outside the file")
    headers = []
    for index in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = _PHDR.unpack_from(
            elf, phoff + index * phentsize
        )
        headers.append(ProgramHeader(type=p_type, offset=offset, vaddr=vaddr, filesz=filesz))
    return headers


def _segment(elf: bytes, header: ProgramHeader) -> bytes:
    end = header.offset + header.filesz
    if end > len(elf):
        raise GuestBuildError("an ELF segment lies outside the file")
    return elf[header.offset : end]


def elf_notes(elf: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """The notes of an ELF file's ``PT_NOTE`` segments.

    :param elf: the file's content.
    :return: (name without the NUL, type, descriptor) for each note.
    :raise GuestBuildError: not a 64-bit little-endian ELF file.
    """
    for header in program_headers(elf):
        if header.type != _PT_NOTE:
            continue
        pos, end = header.offset, min(header.offset + header.filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name_at = pos + 12
            desc_at = name_at + _align4(namesz)
            name = elf[name_at : name_at + namesz].rstrip(b"\x00")
            yield name, note_type, elf[desc_at : desc_at + descsz]
            pos = desc_at + _align4(descsz)


def _align4(value: int) -> int:
    return (value + 3) & ~3


def elf_sections(elf: bytes) -> Iterator[tuple[bytes, int, int, int]]:
    """The sections of an ELF file (a kernel module, say), named through ``.shstrtab``.

    :param elf: the file's content.
    :return: (name, offset in the file, size, offset of the name in the file) for each
        section, in table order.
    :raise GuestBuildError: not a 64-bit little-endian ELF file.
    """
    _check(elf)
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    if shnum and (shentsize < _SHDR.size or shoff + shnum * shentsize > len(elf)):
        raise GuestBuildError("the ELF file's section header table lies outside the file")

    def header(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = _SHDR.unpack_from(elf, shoff + index * shentsize)
        return name, offset, size

    if not shnum:
        return
    _, names_at, _ = header(shstrndx)
    for index in range(shnum):
        name, offset, size = header(index)
        start = names_at + name
        yield elf[start : elf.index(b"\x00", start)], offset, size, start


def dynamic_linking(elf: bytes) -> DynamicLinking:
    """The program interpreter and the dynamic section's libraries of an ELF file.

    The dynamic section (``PT_DYNAMIC``) names its strings by offsets into the string table
    ``DT_STRTAB``, which is an address: it is mapped back to the file through the
    ``PT_LOAD`` segment that holds it. A static program has neither an interpreter nor a
    dynamic section; its result is empty.

    :param elf: the file's content (an executable or a shared library).
    :return: the interpreter, ``DT_NEEDED``, ``DT_SONAME`` and ``DT_RUNPATH`` (or
        ``DT_RPATH``).
    :raise GuestBuildError: not a 64-bit little-endian ELF file, or a dynamic section or
        string table that lies outside it.
    """
    headers = program_headers(elf)
    interpreter = None
    entries: list[tuple[int, int]] = []
    for header in headers:
        if header.type == _PT_INTERP:
            interpreter = _segment(elf, header).split(b"\x00", 1)[0].decode(errors="replace")
        elif header.type == _PT_DYNAMIC:
            data = _segment(elf, header)
            for at in range(0, len(data) - _DYN.size + 1, _DYN.size):
                tag, value = _DYN.unpack_from(data, at)
                if tag == _DT_NULL:
                    break
                entries.append((tag, value))
    if not entries:
        return DynamicLinking(interpreter=interpreter, needed=(), soname=None, runpath=())
    tags = dict(entries)
    if _DT_STRTAB not in tags:
        raise GuestBuildError("the ELF file's dynamic section has no string table")
    strtab = _file_offset(headers, tags[_DT_STRTAB])
    strsz = tags.get(_DT_STRSZ, len(elf) - strtab)
    if strtab + strsz > len(elf):
        raise GuestBuildError("the ELF file's dynamic string table lies outside the file")
    strings = elf[strtab : strtab + strsz]

    def string(offset: int) -> str:
        if offset >= len(strings):
            raise GuestBuildError("an ELF dynamic entry names a string outside its table")
        end = strings.find(b"\x00", offset)
        return strings[offset : end if end >= 0 else len(strings)].decode(errors="replace")

    needed = tuple(string(value) for tag, value in entries if tag == _DT_NEEDED)
    soname = string(tags[_DT_SONAME]) if _DT_SONAME in tags else None
    path = tags.get(_DT_RUNPATH, tags.get(_DT_RPATH))
    runpath = tuple(d for d in string(path).split(":") if d) if path is not None else ()
    return DynamicLinking(interpreter=interpreter, needed=needed, soname=soname, runpath=runpath)


def _file_offset(headers: list[ProgramHeader], address: int) -> int:
    """The file offset of a mapped address, through the ``PT_LOAD`` segment that holds it."""
    for header in headers:
        if header.type == _PT_LOAD and header.vaddr <= address < header.vaddr + header.filesz:
            return header.offset + address - header.vaddr
    raise GuestBuildError(f"the ELF address {address:#x} is in no loaded segment of the file")
