"""OVA archives: a tar holding an OVF descriptor and the VMDK disks it references.

An OVA a user hands us may be crafted as any tar may: members with absolute names or ``..``
that a careless extraction writes outside its directory, links to host files, devices,
members larger than any disk. corral never extracts an OVA as a whole. It reads the member
list, refuses the archive if any member is not a plain file or a directory with a plain
relative name, reads the OVF (at most :data:`MAX_OVF` bytes, no document type declarations,
so no entities), and copies out only the disks the OVF's ``DiskSection`` references, each
into a new file of the caller's directory, at most :data:`MAX_DISK` bytes each. The disks
are then untrusted files like any other, verified before they are converted
(:mod:`corral.storage.verify`).

:func:`is_ova`, :func:`ovf_disks` and :func:`plan_members` are pure; :func:`unpack_disks`
writes files.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final

from corral.errors import ImageError
from corral.units import GiB, MiB, format_size

#: Where a POSIX tar header says ``ustar`` (in the first member's header).
USTAR_OFFSET: Final = 257
USTAR_MAGIC: Final = b"ustar"
#: Largest OVF descriptor read, in bytes.
MAX_OVF: Final = 1 * MiB
#: Largest disk member copied out, in bytes.
MAX_DISK: Final = 256 * GiB
#: Most members an archive may have.
MAX_MEMBERS: Final = 1000
#: Most disks imported from one archive.
MAX_DISKS: Final = 16

_OVF_NS: Final = "http://schemas.dmtf.org/ovf/envelope/1"


def is_ova(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a tar archive (what an OVA is).

    :param head: at least the first 262 bytes of the file.
    """
    return head[USTAR_OFFSET : USTAR_OFFSET + len(USTAR_MAGIC)] == USTAR_MAGIC


def _attr(element: ET.Element, name: str) -> str | None:
    """An OVF attribute, namespaced (``ovf:href``) or not."""
    return element.get(f"{{{_OVF_NS}}}{name}", element.get(name))


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _plain_name(name: str) -> bool:
    """Whether ``name`` is a relative path without ``..``, NULs or empty parts."""
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        return False
    parts = PurePosixPath(name).parts
    return bool(parts) and all(part not in ("..", ".", "") for part in parts)


def _references(root: ET.Element) -> tuple[dict[str, str], list[str]]:
    """An OVF's files (by id: name) and the file ids of its disks, in order."""
    files: dict[str, str] = {}
    disks: list[str] = []
    for element in root.iter():
        tag = _local(element.tag)
        if tag == "File":
            file_id, href = _attr(element, "id"), _attr(element, "href")
            if file_id is not None and href is not None:
                files[file_id] = href
        elif tag == "Disk" and (ref := _attr(element, "fileRef")) is not None:
            disks.append(ref)
    return files, disks


def ovf_disks(shown: str, text: bytes) -> list[str]:
    """The file names of the disks an OVF descriptor's ``DiskSection`` references, in order.

    :param shown: the archive, for messages.
    :param text: the descriptor.
    :raise ImageError: it is not an OVF, declares a document type, or references a disk by a
        name that is not a plain file name, by an unknown file id, or no disk at all.
    """
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise ImageError(shown, "its OVF declares a document type; corral does not read one")
    try:
        root = ET.fromstring(text)  # noqa: S314 (no DTD, bounded size: checked above)
    except ET.ParseError as exc:
        raise ImageError(shown, f"its OVF is not XML: {exc}") from None
    if _local(root.tag) != "Envelope":
        raise ImageError(shown, "its OVF has no Envelope")
    files, disks = _references(root)
    names: list[str] = []
    for ref in disks:
        if ref not in files:
            raise ImageError(shown, f"its OVF's disk references an unknown file {ref!r}")
        href = files[ref]
        if "/" in href or not _plain_name(href):
            raise ImageError(shown, f"its OVF references {href!r}, not a file of the archive")
        names.append(href)
    if not names:
        raise ImageError(shown, "its OVF references no disk")
    if len(names) > MAX_DISKS:
        raise ImageError(shown, f"its OVF references {len(names)} disks; at most {MAX_DISKS}")
    if len(set(names)) != len(names):
        raise ImageError(shown, "its OVF references the same disk file twice")
    return names


@dataclass(frozen=True)
class Member:
    """What :func:`plan_members` needs of a tar member."""

    name: str
    size: int
    #: Whether it is a regular file (not a link, device, FIFO).
    regular: bool
    directory: bool = False


def plan_members(shown: str, members: list[Member], disks: list[str]) -> list[Member]:
    """Check every member of an archive and choose the ``disks`` among them.

    :param shown: the archive, for messages.
    :param disks: the file names the OVF references (:func:`ovf_disks`).
    :return: the disks' members, in ``disks``' order.
    :raise ImageError: a member has an absolute name or ``..``, is a link, device or FIFO;
        a disk is missing, present twice, or larger than :data:`MAX_DISK`.
    """
    if len(members) > MAX_MEMBERS:
        raise ImageError(shown, f"it has more than {MAX_MEMBERS} members")
    by_name: dict[str, list[Member]] = {}
    for member in members:
        if not _plain_name(member.name):
            raise ImageError(shown, f"its member {member.name!r} is not a plain relative name")
        if not (member.regular or member.directory):
            raise ImageError(
                shown, f"its member {member.name!r} is a link or special file; corral refuses it"
            )
        by_name.setdefault(member.name, []).append(member)
    chosen: list[Member] = []
    for disk in disks:
        found = [m for m in by_name.get(disk, []) if m.regular]
        if not found:
            raise ImageError(shown, f"the disk {disk!r} its OVF references is not in it")
        if len(found) > 1:
            raise ImageError(shown, f"it holds the disk {disk!r} twice")
        if found[0].size > MAX_DISK:
            raise ImageError(shown, f"its disk {disk!r} is larger than {format_size(MAX_DISK)}")
        chosen.append(found[0])
    return chosen


def _member(info: tarfile.TarInfo) -> Member:
    return Member(name=info.name, size=info.size, regular=info.isreg(), directory=info.isdir())


def _copy(source: IO[bytes], dest: Path, size: int) -> None:
    """Copy exactly ``size`` bytes of ``source`` to the new file ``dest`` (mode 0600)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)
        if out.tell() != size:
            raise ValueError(f"{dest.name}: {out.tell()} bytes, not {size}")
        out.flush()
        os.fsync(out.fileno())


def unpack_disks(path: Path, directory: Path) -> list[Path]:
    """Copy the disks an OVA's OVF references into ``directory``: ``disk-0.vmdk``, ...

    Nothing else is extracted. On failure, the files written so far are removed.

    :param path: the archive (an uncompressed tar).
    :param directory: an existing, private directory.
    :return: the disks' new files, in the OVF's order.
    :raise ImageError: the archive is not a readable tar, its OVF is missing, several or
        refused (:func:`ovf_disks`), a member is refused (:func:`plan_members`).
    """
    shown = str(path)
    written: list[Path] = []
    try:
        with tarfile.open(path, mode="r:") as archive:
            infos: list[tarfile.TarInfo] = []
            for info in archive:
                infos.append(info)
                if len(infos) > MAX_MEMBERS:
                    raise ImageError(shown, f"it has more than {MAX_MEMBERS} members")
            members = [_member(info) for info in infos]
            ovfs = [i for i in infos if i.isreg() and i.name.lower().endswith(".ovf")]
            if len(ovfs) != 1:
                raise ImageError(shown, f"an OVA holds one .ovf descriptor, it holds {len(ovfs)}")
            if ovfs[0].size > MAX_OVF:
                raise ImageError(shown, f"its OVF is larger than {format_size(MAX_OVF)}")
            plan_members(shown, members, [])  # every member checked before anything is read
            reader = archive.extractfile(ovfs[0])
            assert reader is not None  # a regular member
            disks = plan_members(shown, members, ovf_disks(shown, reader.read(MAX_OVF)))
            by_name = {info.name: info for info in infos if info.isreg()}
            for index, disk in enumerate(disks):
                source = archive.extractfile(by_name[disk.name])
                assert source is not None
                dest = directory / f"disk-{index}.vmdk"
                written.append(dest)
                _copy(source, dest, disk.size)
    except (tarfile.TarError, ValueError, EOFError) as exc:
        _remove(written)
        raise ImageError(shown, f"not a readable OVA (tar) archive: {exc}") from None
    except BaseException:
        _remove(written)
        raise
    return written


def _remove(paths: list[Path]) -> None:
    for written in paths:
        written.unlink(missing_ok=True)
