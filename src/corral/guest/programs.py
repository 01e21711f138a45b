"""Dynamically linked programs from unpacked Debian packages, with exactly the libraries they load.

:func:`program_files` starts from programs in a tree where Debian packages were unpacked
(``dpkg-deb -x``) and follows their ``DT_NEEDED`` entries
(:func:`~corral.guest.elf.dynamic_linking`) recursively, looking each library up as the
guest's dynamic loader will: in the object's ``DT_RUNPATH``, then in :data:`LIBRARY_DIRS`
(the guest has no ``/etc/ld.so.cache``). The result is the set of files to put in the root
file system: the programs, the libraries they need under the names they are asked for (a
symbolic link kept as the package has it, such as ``libz.so.1 -> libz.so.1.2.13``, with its
target), and the dynamic loader at the programs' ``PT_INTERP`` path. Nothing else of the
packages is copied. A library that is not in the tree fails the build: the packages that
provide the libraries are pinned by name (:data:`~corral.guest.debian.PROGRAM_PACKAGES`), and a
new dependency must be added there.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

from corral.errors import GuestBuildError
from corral.guest.elf import dynamic_linking
from corral.guest.rootfs import RootFile

#: Where Debian's x86-64 dynamic loader looks for a library without ``/etc/ld.so.cache``
#: (``ld.so --help`` lists them as its "system search path"), relative to ``/``.
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib")
#: Symbolic links followed in a row before giving up (as the kernel's ``ELOOP`` limit).
_MAX_LINKS = 40


def program_files(tree: Path, programs: Sequence[str]) -> list[RootFile]:
    """The programs, the shared libraries they load and their dynamic loader, from ``tree``.

    :param tree: where the packages were unpacked.
    :param programs: paths of the programs relative to ``/`` (``usr/sbin/dropbear``).
    :return: the files and symbolic links to stage, each once, sorted by path; modes are the
        packages' own.
    :raise GuestBuildError: a program is missing or not a 64-bit ELF, a library it needs
        (directly or through another library) or its interpreter is not in the tree.
    """
    staged: dict[str, RootFile] = {}
    pending: list[tuple[str, str | None]] = [(program, None) for program in programs]
    seen: set[str] = set()
    while pending:
        path, wanted_by = pending.pop(0)
        if path in seen:
            continue
        seen.add(path)
        final = _stage(tree, path, staged, wanted_by)
        if final in seen and final != path:
            continue
        seen.add(final)
        try:
            linking = dynamic_linking((tree / final).read_bytes())
        except GuestBuildError as exc:
            raise GuestBuildError(f"cannot read /{final} from the packages: {exc}") from exc
        if linking.interpreter is not None:
            pending.append((linking.interpreter.lstrip("/"), f"/{path}"))
        for name in linking.needed:
            found = find_library(tree, name, linking.runpath)
            if found is None:
                dirs = ", ".join(f"/{d}" for d in (*linking.runpath, *LIBRARY_DIRS))
                raise GuestBuildError(
                    f"/{path} needs the shared library {name}, which is in none of the "
                    f"unpacked packages ({dirs}); add its Debian package to PROGRAM_PACKAGES"
                )
            pending.append((found, f"/{path}"))
    return [staged[path] for path in sorted(staged)]


def find_library(tree: Path, name: str, runpath: Sequence[str] = ()) -> str | None:
    """Where the dynamic loader finds the library ``name`` in ``tree``, relative to ``/``.

    :param tree: where the packages were unpacked.
    :param name: a ``DT_NEEDED`` entry (``libc.so.6``, or a path if it holds a ``/``).
    :param runpath: the ``DT_RUNPATH`` directories of the object that needs it.
    :return: the path (possibly a symbolic link) or ``None`` if no directory has it.
    """
    if "/" in name:
        candidates = [name.lstrip("/")]
    else:
        candidates = [posixpath.join(d.strip("/"), name) for d in (*runpath, *LIBRARY_DIRS)]
    for candidate in candidates:
        if (tree / candidate).exists():
            return candidate
    return None


def _stage(tree: Path, path: str, staged: dict[str, RootFile], wanted_by: str | None) -> str:
    """Stage ``path`` (and, for a symbolic link, its chain of targets); return the file."""
    current = posixpath.normpath(path)
    for _ in range(_MAX_LINKS):
        source = tree / current
        if source.is_symlink():
            target = str(source.readlink())
            staged[current] = RootFile(current, link=target)
            if target.startswith("/"):
                current = posixpath.normpath(target.lstrip("/"))
            else:
                current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
            if current.startswith("../") or current == "..":
                raise GuestBuildError(f"/{path} links outside the root file system ({target})")
            continue
        if not source.is_file():
            needed = f" (needed by {wanted_by})" if wanted_by else ""
            raise GuestBuildError(f"/{current}{needed} is not in the unpacked packages")
        staged[current] = RootFile(
            current, content=source.read_bytes(), mode=source.stat().st_mode & 0o7777
        )
        return current
    raise GuestBuildError(f"/{path}: too many levels of symbolic links in the packages")
