"""Unit tests of the ELF reader and of the program/library resolution: no QEMU, no network.

Synthetic ELF files are built here; the host's own programs and libraries are read too.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from corral.errors import GuestBuildError
from corral.guest.elf import dynamic_linking, elf_notes, elf_sections, program_headers
from corral.guest.programs import find_library, program_files
from corral.guest.rootfs import RootFile

_BASE = 0x400000


def make_elf(
    *,
    interp: str | None = None,
    needed: tuple[str, ...] = (),
    soname: str | None = None,
    runpath: str | None = None,
    rpath: str | None = None,
    dynamic: bool = True,
    elf_class: int = 2,
) -> bytes:
    """A 64-bit ELF with a PT_LOAD of the whole file, optional PT_INTERP and PT_DYNAMIC."""
    strtab = b"\x00"

    def string(text: str) -> int:
        nonlocal strtab
        offset = len(strtab)
        strtab += text.encode() + b"\x00"
        return offset

    entries = [(1, string(name)) for name in needed]
    if soname is not None:
        entries.append((14, string(soname)))
    if runpath is not None:
        entries.append((29, string(runpath)))
    if rpath is not None:
        entries.append((15, string(rpath)))
    phnum = 1 + (interp is not None) + dynamic
    at = 64 + 56 * phnum
    interp_bytes = interp.encode() + b"\x00" if interp is not None else b""
    interp_at = at
    strtab_at = interp_at + len(interp_bytes)
    dyn_at = strtab_at + len(strtab)
    entries += [(5, _BASE + strtab_at), (10, len(strtab)), (0, 0)]
    dyn = b"".join(struct.pack("<qQ", tag, value) for tag, value in entries)
    total = dyn_at + (len(dyn) if dynamic else 0)

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQQQ", p_type, 4, offset, _BASE + offset, 0, size, size, 8)

    phdrs = phdr(1, 0, total)
    if interp is not None:
        phdrs += phdr(3, interp_at, len(interp_bytes))
    if dynamic:
        phdrs += phdr(2, dyn_at, len(dyn))
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 0x3E, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    body = header + phdrs + interp_bytes + strtab + (dyn if dynamic else b"")
    assert len(body) == total
    return body


# -- the ELF reader ----------------------------------------------------------------------------


def test_dynamic_linking_of_a_synthetic_program() -> None:
    elf = make_elf(
        interp="/lib64/ld-linux-x86-64.so.2",
        needed=("libz.so.1", "libc.so.6"),
        runpath="$ORIGIN/../lib:/opt/lib",
    )
    info = dynamic_linking(elf)
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libz.so.1", "libc.so.6")
    assert info.soname is None
    assert info.runpath == ("$ORIGIN/../lib", "/opt/lib")


def test_dynamic_linking_of_a_synthetic_library() -> None:
    info = dynamic_linking(make_elf(needed=("libc.so.6",), soname="libz.so.1", rpath="/old"))
    assert info.interpreter is None and info.soname == "libz.so.1"
    assert info.needed == ("libc.so.6",) and info.runpath == ("/old",)


def test_static_program_has_nothing_to_load() -> None:
    info = dynamic_linking(make_elf(dynamic=False))
    assert info.interpreter is None and info.needed == () and info.runpath == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"#!/bin/sh\n" + bytes(100), "64-bit little-endian"),
        (make_elf(elf_class=1), "64-bit little-endian"),
        (make_elf(needed=("libc.so.6",))[:200], "outside the file"),
    ],
)
def test_dynamic_linking_rejects(data: bytes, message: str) -> None:
    with pytest.raises(GuestBuildError, match=message):
        dynamic_linking(data)


def test_dynamic_linking_of_the_hosts_ls() -> None:
    ls = Path("/bin/ls")
    if not ls.is_file():
        pytest.skip("no /bin/ls")
    info = dynamic_linking(ls.read_bytes())
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed
    assert info.soname is None
    headers = program_headers(ls.read_bytes())
    assert {1, 2, 3} <= {h.type for h in headers}  # PT_LOAD, PT_DYNAMIC, PT_INTERP
    assert any(name == b"GNU" for name, _, _ in elf_notes(ls.read_bytes()))
    assert b".dynamic" in {name for name, *_ in elf_sections(ls.read_bytes())}


def test_dynamic_linking_of_the_hosts_libc() -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.is_file():
        pytest.skip("no Debian x86-64 libc on this host")
    info = dynamic_linking(libc.read_bytes())
    assert info.soname == "libc.so.6"
    assert info.needed == ("ld-linux-x86-64.so.2",)


# -- programs and the libraries they load ------------------------------------------------------


def put(tree: Path, path: str, content: bytes, mode: int = 0o644) -> None:
    target = tree / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    target.chmod(mode)


def link(tree: Path, path: str, target: str) -> None:
    (tree / path).parent.mkdir(parents=True, exist_ok=True)
    (tree / path).symlink_to(target)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Unpacked "packages": a program, libraries by symlinked sonames, a loader, and chaff."""
    root = tmp_path / "tree"
    interp = "/lib64/ld-linux-x86-64.so.2"
    put(root, "usr/sbin/server", make_elf(interp=interp, needed=("liba.so.1", "libc.so.6")), 0o755)
    put(root, "usr/bin/keygen", make_elf(interp=interp, needed=("libc.so.6",)), 0o755)
    put(root, "usr/lib/x86_64-linux-gnu/liba.so.1.2.3", make_elf(needed=("libb.so.2",)))
    link(root, "usr/lib/x86_64-linux-gnu/liba.so.1", "liba.so.1.2.3")
    put(root, "lib/x86_64-linux-gnu/libb.so.2", make_elf(needed=("libc.so.6",)))
    put(root, "lib/x86_64-linux-gnu/libc.so.6", make_elf(needed=("ld-linux-x86-64.so.2",)), 0o755)
    put(root, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", make_elf(), 0o755)
    link(root, "lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    put(root, "lib/x86_64-linux-gnu/libunused.so.1", make_elf())
    put(root, "usr/share/doc/readme", b"not copied")
    return root


def test_program_files_are_the_programs_and_what_they_load(tree: Path) -> None:
    files = program_files(tree, ["usr/sbin/server", "usr/bin/keygen"])
    by_path = {f.path: f for f in files}
    assert list(by_path) == sorted(by_path)
    assert set(by_path) == {
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libb.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
        "usr/bin/keygen",
        "usr/lib/x86_64-linux-gnu/liba.so.1",
        "usr/lib/x86_64-linux-gnu/liba.so.1.2.3",
        "usr/sbin/server",
    }
    assert by_path["usr/lib/x86_64-linux-gnu/liba.so.1"] == RootFile(
        "usr/lib/x86_64-linux-gnu/liba.so.1", link="liba.so.1.2.3"
    )
    assert by_path["lib64/ld-linux-x86-64.so.2"].link == (
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    server = by_path["usr/sbin/server"]
    assert server.mode == 0o755 and server.link is None
    assert server.content == (tree / "usr/sbin/server").read_bytes()
    assert by_path["lib/x86_64-linux-gnu/libb.so.2"].mode == 0o644


def test_find_library_order(tree: Path) -> None:
    assert find_library(tree, "libc.so.6") == "lib/x86_64-linux-gnu/libc.so.6"
    assert find_library(tree, "liba.so.1") == "usr/lib/x86_64-linux-gnu/liba.so.1"
    assert find_library(tree, "libnone.so.9") is None
    put(tree, "opt/lib/libc.so.6", make_elf())
    assert find_library(tree, "libc.so.6", ("/opt/lib",)) == "opt/lib/libc.so.6"
    assert find_library(tree, "/lib64/ld-linux-x86-64.so.2") == "lib64/ld-linux-x86-64.so.2"


def test_missing_library_fails_the_build_by_name(tree: Path) -> None:
    (tree / "lib/x86_64-linux-gnu/libb.so.2").unlink()
    with pytest.raises(GuestBuildError) as info:
        program_files(tree, ["usr/sbin/server"])
    message = str(info.value)
    assert "libb.so.2" in message and "/usr/lib/x86_64-linux-gnu/liba.so.1" in message
    assert "PROGRAM_PACKAGES" in message


def test_missing_program_or_interpreter(tree: Path) -> None:
    with pytest.raises(GuestBuildError, match="/usr/sbin/nothing is not in the unpacked"):
        program_files(tree, ["usr/sbin/nothing"])
    (tree / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unlink()
    with pytest.raises(GuestBuildError, match=r"needed by /usr/bin/keygen"):
        program_files(tree, ["usr/bin/keygen"])


def test_symbolic_link_loops_and_escapes(tree: Path) -> None:
    link(tree, "usr/bin/loop", "loop2")
    link(tree, "usr/bin/loop2", "loop")
    with pytest.raises(GuestBuildError, match="too many levels"):
        program_files(tree, ["usr/bin/loop"])
    link(tree, "usr/bin/out", "../../../etc/passwd")
    with pytest.raises(GuestBuildError, match="outside"):
        program_files(tree, ["usr/bin/out"])


def test_a_file_that_is_not_elf(tree: Path) -> None:
    put(tree, "usr/bin/script", b"#!/bin/sh\necho hi\n" * 10, 0o755)
    with pytest.raises(GuestBuildError, match="cannot read /usr/bin/script"):
        program_files(tree, ["usr/bin/script"])


def test_the_hosts_own_program_resolves(tmp_path: Path) -> None:
    """The host's /bin/ls with its libraries copied into a tree, found as its loader would."""
    ls = Path("/bin/ls")
    libdir = Path("/lib/x86_64-linux-gnu")
    if not ls.is_file() or not (libdir / "libc.so.6").is_file():
        pytest.skip("not a Debian x86-64 host")
    root = tmp_path / "tree"
    put(root, "bin/ls", ls.read_bytes(), 0o755)
    wanted = ["libc.so.6", "ld-linux-x86-64.so.2"]
    while wanted:
        name = wanted.pop()
        target = root / "lib/x86_64-linux-gnu" / name
        if target.exists():
            continue
        real = (libdir / name).resolve()
        put(root, f"lib/x86_64-linux-gnu/{name}", real.read_bytes())
        wanted += dynamic_linking(real.read_bytes()).needed
        for dep in dynamic_linking(ls.read_bytes()).needed:
            if not (root / "lib/x86_64-linux-gnu" / dep).exists() and dep not in wanted:
                wanted.append(dep)
    link(root, "lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    files = {f.path for f in program_files(root, ["bin/ls"])}
    assert {"bin/ls", "lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2"} <= files
    shutil.rmtree(root)
