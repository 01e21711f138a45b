"""The reference guest's initramfs: the kernel modules it loads, in a newc cpio written here.

Planning is pure: :func:`resolve_modules` reads the wanted modules' dependencies from their
``.modinfo`` (:func:`modinfo`) in the unpacked kernel package (:class:`ModuleTree`) and puts
them in load order. Writing is plain Python too: :func:`write_newc` writes the cpio itself, so
the ``/dev/console`` node needs no root, and :func:`write_initramfs` fills it with busybox,
the modules and the recipe's ``/init``.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from corral.errors import GuestBuildError
from corral.guest.tools import EPOCH, recipe_text

# --------------------------------------------------------------------------------------------
# Kernel modules


def module_name(path_or_name: str) -> str:
    """The canonical name of a module: file name without ``.ko``, dashes as underscores."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a kernel module: each key with its values.

    :param ko: the module file's content (uncompressed ELF).
    :return: e.g. ``{"name": ["ext4"], "depends": ["mbcache,jbd2,crc16"], ...}``.
    :raise GuestBuildError: not a 64-bit ELF, or no ``.modinfo`` section.
    """
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise GuestBuildError("kernel module is not a 64-bit little-endian ELF")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", ko, shoff + index * shentsize
        )
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = ko[str_off : str_off + str_size]
    for index in range(shnum):
        name_at, offset, size = section(index)
        if names[name_at : names.index(b"\x00", name_at)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for entry in ko[offset : offset + size].split(b"\x00"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise GuestBuildError("kernel module has no .modinfo section")


class ModuleTree:
    """The modules of one kernel as unpacked from its package (``lib/modules/<version>``).

    :param root: the ``lib/modules/<version>`` directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[str, Path] = {}
        for path in sorted((root / "kernel").rglob("*.ko*")):
            self._paths.setdefault(module_name(path.name), path)
        builtin = root / "modules.builtin"
        lines = builtin.read_text().split() if builtin.is_file() else []
        self._builtin = {module_name(line) for line in lines}

    def is_builtin(self, name: str) -> bool:
        """Whether the kernel has the module built in."""
        return name in self._builtin

    def path(self, name: str) -> Path | None:
        """The module's file, if it is a loadable module."""
        return self._paths.get(name)

    def content(self, name: str) -> bytes:
        """The module's uncompressed ELF content.

        :raise GuestBuildError: no such module, or a compression Python cannot read.
        """
        path = self.path(name)
        if path is None:
            raise GuestBuildError(f"kernel module {name} is not in the kernel package")
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if path.name.endswith(".ko.gz"):
            return zlib.decompress(data, wbits=16 + zlib.MAX_WBITS)
        if path.name.endswith(".ko"):
            return data
        raise GuestBuildError(f"kernel module {path.name} uses an unsupported compression")


def parse_module_list(text: str) -> list[str]:
    """Module names from the recipe's ``modules`` file (``#`` starts a comment).

    :param text: the file's content.
    :return: canonical module names, in order.
    """
    names = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            names.append(module_name(entry))
    return names


def resolve_modules(wanted: Iterable[str], tree: ModuleTree) -> list[tuple[str, bytes]]:
    """The modules to load for ``wanted``, dependencies first, each once, with their content.

    Built-in modules are skipped. The order follows ``wanted``, each module preceded by the
    modules it depends on (depth first).

    :param wanted: canonical module names.
    :param tree: the kernel's modules.
    :return: (name, uncompressed ``.ko`` content) in load order.
    :raise GuestBuildError: a module is neither built in nor in the package, or the
        dependencies form a cycle.
    """
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done or tree.is_builtin(name):
            return
        if name in visiting:
            raise GuestBuildError(
                f"kernel module dependency cycle: {' -> '.join([*visiting, name])}"
            )
        if tree.path(name) is None:
            raise GuestBuildError(
                f"kernel module {name} is neither built into the kernel nor in its package"
            )
        visiting.append(name)
        content = tree.content(name)
        info = modinfo(content)
        for value in info.get("depends", []):
            for dep in value.split(","):
                if dep.strip():
                    visit(module_name(dep.strip()))
        visiting.pop()
        done.add(name)
        order.append((name, content))

    for name in wanted:
        visit(name)
    return order


# --------------------------------------------------------------------------------------------
# The newc cpio, written here so device nodes need no root


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive."""

    #: Path inside the archive, without a leading ``/``.
    name: str
    #: Full ``st_mode`` (file type and permissions).
    mode: int
    #: File content, or the target of a symbolic link.
    data: bytes = b""
    #: Device number of a character or block device node.
    rdev: tuple[int, int] = (0, 0)


def write_newc(entries: Iterable[CpioEntry], out: BinaryIO, mtime: int = EPOCH) -> None:
    """Write a newc (``070701``) cpio archive, owned by root, with a fixed time.

    :param entries: the members, parents before children.
    :param out: where to write.
    :param mtime: the time stamp of every member.
    """
    written = 0

    def put(data: bytes) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    def pad() -> None:
        put(b"\x00" * (-written % 4))

    members = [*entries, CpioEntry(name="TRAILER!!!", mode=0)]
    for ino, entry in enumerate(members, start=1):
        name = entry.name.encode() + b"\x00"
        is_dir = (entry.mode & 0o170000) == 0o040000
        fields = (
            ino if entry.name != "TRAILER!!!" else 0,
            entry.mode,
            0,
            0,
            2 if is_dir else 1,
            mtime if entry.name != "TRAILER!!!" else 0,
            len(entry.data),
            0,
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,
        )
        put(b"070701" + b"".join(b"%08X" % f for f in fields))
        put(name)
        pad()
        put(entry.data)
        pad()


def write_initramfs(path: Path, busybox: Path, modules: Sequence[tuple[str, bytes]]) -> None:
    """Write the initramfs: busybox, the modules (loaded in the given order) and ``/init``.

    :param path: the cpio file to write.
    :param busybox: the static busybox.
    :param modules: (name, uncompressed ``.ko`` content) in load order, as
        :func:`resolve_modules` returns them.
    """
    entries = [
        CpioEntry("bin", 0o040755),
        CpioEntry("bin/busybox", 0o100755, busybox.read_bytes()),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("dev", 0o040755),
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("init", 0o100755, recipe_text("init")),
        CpioEntry("lib", 0o040755),
        CpioEntry("lib/modules", 0o040755),
        *(CpioEntry(f"lib/modules/{name}.ko", 0o100644, content) for name, content in modules),
        CpioEntry("modules.load", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode()),
        CpioEntry("newroot", 0o040755),
        CpioEntry("proc", 0o040755),
        CpioEntry("sys", 0o040755),
    ]
    with path.open("wb") as handle:
        write_newc(entries, handle)
