"""The reference guest's kernel modules, and its initramfs: a newc cpio written here.

Planning is pure: :func:`resolve_modules` reads the wanted modules' dependencies from their
``.modinfo`` (:func:`modinfo`) in the unpacked kernel package (:class:`ModuleTree`) and puts
them in load order; :func:`module_directory` lays out a ``/lib/modules/<version>`` for the
root disk, with the ``modules.dep`` that busybox ``modprobe`` reads. Every module is shipped
as :func:`prepare_module` makes it: without its signature, its ftrace call sites hidden.
Writing is plain Python too: :func:`write_newc` writes the cpio itself, so the
``/dev/console`` node needs no root, and :func:`write_initramfs` fills it with busybox, the
modules and the recipe's ``/init``.
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
from corral.guest.elf import elf_sections
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
    for name, offset, size, _ in elf_sections(ko):
        if name == b".modinfo":
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

    def relative_path(self, name: str) -> str:
        """The module's path below the tree, named as uncompressed (``kernel/fs/ext4/ext4.ko``).

        :raise GuestBuildError: no such module.
        """
        path = self.path(name)
        if path is None:
            raise GuestBuildError(f"kernel module {name} is not in the kernel package")
        relative = path.relative_to(self.root).as_posix()
        return relative[: relative.rindex(".ko")] + ".ko"

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


#: The end of a signed module (``scripts/sign-file``): the signature, then a 12-byte
#: ``struct module_signature`` whose last 4 bytes are the signature's length (big-endian),
#: then this magic.
SIGNATURE_MAGIC = b"~Module signature appended~\n"
_SIGNATURE_INFO = 12


def strip_signature(ko: bytes) -> bytes:
    """The module without its appended signature; a module without one is returned as it is.

    The guest's kernel (``CONFIG_MODULE_SIG`` without ``MODULE_SIG_FORCE``) loads an unsigned
    module and only marks itself tainted (``E``), while checking a signature costs it a
    SHA-256 of the whole module and an RSA verification, slow under TCG: about 0.08 s of the
    boot for the modules the initramfs loads. The files come from the kernel package that
    apt verified on the host, so the guest would only check the same bytes again. (A module
    changed but still signed would be refused: :func:`hide_ftrace_call_sites` needs this.)

    :param ko: the module's content (uncompressed ELF, signed or not).
    :raise GuestBuildError: the signature trailer is malformed.
    """
    if not ko.endswith(SIGNATURE_MAGIC):
        return ko
    info_end = len(ko) - len(SIGNATURE_MAGIC)
    (signature_length,) = struct.unpack_from(">I", ko, info_end - 4)
    end = info_end - _SIGNATURE_INFO - signature_length
    if end < 64 or ko[:4] != b"\x7fELF":
        raise GuestBuildError("kernel module has a malformed signature trailer")
    return ko[:end]


#: The section listing a module's ftrace call sites (each function's ``call __fentry__``).
MCOUNT_SECTION = b"__mcount_loc"
#: What :func:`hide_ftrace_call_sites` renames it to (same length: renamed in place).
HIDDEN_MCOUNT_SECTION = b"__mcount_off"


def hide_ftrace_call_sites(ko: bytes) -> bytes:
    """The module with its ftrace call-site list renamed, so that ftrace never sees it.

    When a module loads, ftrace turns the ``call __fentry__`` that starts each of its
    functions into a no-op and then checks every call site with a symbol lookup that scans
    all the module's symbols: quadratic, about 35 ms of a TCG boot, most of it for ext4.
    Under another name the section is loaded as plain data, ftrace finds no call sites, and
    each call stays a call to ``__fentry__``, which only returns. The cost: the module's
    functions cannot be traced with ftrace (the guest has no tracefs anyway; see
    ``KERNEL_CMDLINE``); kprobes still work. A module without the section is returned as
    it is. The module must be unsigned (:func:`strip_signature`): the kernel refuses a
    module whose signature does not match.

    :param ko: the module's content (uncompressed ELF).
    :raise GuestBuildError: not a 64-bit ELF.
    """
    for name, _offset, _size, name_at in elf_sections(ko):
        if name == MCOUNT_SECTION:
            return ko[:name_at] + HIDDEN_MCOUNT_SECTION + ko[name_at + len(MCOUNT_SECTION) :]
    return ko


def prepare_module(ko: bytes) -> bytes:
    """A module as the guest gets it: signature stripped, ftrace call sites hidden.

    :func:`strip_signature`, then :func:`hide_ftrace_call_sites`; both only spare the guest's
    kernel work when it loads the module.

    :param ko: the module's content as packaged (uncompressed ELF).
    :raise GuestBuildError: not a 64-bit ELF, or a malformed signature.
    """
    return hide_ftrace_call_sites(strip_signature(ko))


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


def module_directory(wanted: Iterable[str], tree: ModuleTree) -> dict[str, bytes]:
    """The files of a ``/lib/modules/<version>`` directory for busybox ``modprobe``.

    It holds ``wanted`` and their dependencies, each at its path in the package
    (uncompressed, :func:`prepare_module`), and a ``modules.dep`` that lists, for each of them,
    every module it needs (transitively), the one to load first last, as ``depmod`` writes it.

    :param wanted: canonical module names.
    :param tree: the kernel's modules.
    :return: path relative to the directory -> content, ``modules.dep`` included.
    :raise GuestBuildError: as :func:`resolve_modules`.
    """
    files: dict[str, bytes] = {}
    lines = []
    for name, content in resolve_modules(wanted, tree):
        relative = tree.relative_path(name)
        files[relative] = prepare_module(content)
        needs = [tree.relative_path(dep) for dep, _ in resolve_modules([name], tree)[:-1]]
        lines.append(f"{relative}: {' '.join(reversed(needs))}".rstrip() + "\n")
    files["modules.dep"] = "".join(lines).encode()
    return files


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
