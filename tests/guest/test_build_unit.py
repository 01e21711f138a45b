"""Unit tests of the reference guest builder: no QEMU, no network, synthetic inputs."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from corral.errors import GuestBuildError, ToolError
from corral.guest import build, debian, rootfs, tools
from corral.guest.build import recipe_key
from corral.guest.debian import PackagePin, kernel_package_from_depends
from corral.guest.initramfs import (
    SIGNATURE_MAGIC,
    CpioEntry,
    ModuleTree,
    hide_ftrace_call_sites,
    modinfo,
    module_directory,
    module_name,
    parse_module_list,
    prepare_module,
    resolve_modules,
    strip_signature,
    write_newc,
)
from corral.guest.kernel import extract_vmlinux, pvh_entry

# -- synthetic ELF images ----------------------------------------------------------------------


def _elf_header(
    *, phoff: int = 0, phnum: int = 0, shoff: int = 0, shnum: int = 0, shstrndx: int = 0
) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, 0, phoff, shoff, 0, 64, 56, phnum, 64, shnum, shstrndx
    )


def _note(name: bytes, note_type: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def make_vmlinux(entry: int | None = 0x1000000) -> bytes:
    """A 64-bit ELF with one PT_NOTE segment holding a Linux note and, if given, the PVH note."""
    notes = _note(b"Linux\x00", 6, b"6.1\x00")
    if entry is not None:
        notes += _note(b"Xen\x00", 18, struct.pack("<Q", entry))
    notes_at = 64 + 56
    phdr = struct.pack("<IIQQQQQQ", 4, 4, notes_at, 0, 0, len(notes), len(notes), 4)
    return _elf_header(phoff=64, phnum=1) + phdr + notes + b"\x90" * 64


def make_ko(info: dict[str, str], sections: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """A 64-bit ELF with a .modinfo section, the given ``(name, data)`` sections and .shstrtab.

    The section names are stored as ``ld`` does: a name that ends another (``__mcount_loc``
    in ``.rela__mcount_loc``) points into that one.
    """
    modinfo_data = b"".join(f"{k}={v}".encode() + b"\x00" for k, v in info.items())
    named = [(".modinfo", modinfo_data), *sections]
    strtab = b"\x00"
    name_at: dict[str, int] = {}
    for name in sorted({n for n, _ in named} | {".shstrtab"}, key=len, reverse=True):
        encoded = name.encode() + b"\x00"
        found = strtab.find(encoded)
        if found < 0:
            found = len(strtab)
            strtab += encoded
        name_at[name] = found

    def shdr(name: int, sh_type: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, sh_type, 0, 0, offset, size, 0, 0, 1, 0)

    body = b""
    headers = shdr(0, 0, 0, 0)
    for name, data in named:
        headers += shdr(name_at[name], 1, 64 + len(body), len(data))
        body += data
    headers += shdr(name_at[".shstrtab"], 3, 64 + len(body), len(strtab))
    body += strtab
    body += bytes(-(64 + len(body)) % 8)
    shoff = 64 + len(body)
    return _elf_header(shoff=shoff, shnum=len(named) + 2, shstrndx=len(named) + 1) + body + headers


def sign(ko: bytes, signature: bytes = b"\x30\x82pkcs7" * 40) -> bytes:
    """``ko`` as ``scripts/sign-file`` leaves it: signature, module_signature, magic."""
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", len(signature))
    return ko + signature + info + b"~Module signature appended~\n"


def make_bzimage(payload: bytes, *, setup_sects: int = 1, version: int = 0x020F) -> bytes:
    """A file with a Linux setup header whose protected-mode part holds ``payload``."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    payload_offset = 0x40
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    return bytes(setup) + b"\xcc" * payload_offset + payload + b"\xcc" * 100


# -- kernel ------------------------------------------------------------------------------------


def test_extract_vmlinux_xz_payload_with_size_trailer() -> None:
    vmlinux = make_vmlinux()
    payload = lzma.compress(vmlinux, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    payload += struct.pack("<I", len(vmlinux))  # the kernel appends the uncompressed size
    assert extract_vmlinux(make_bzimage(payload)) == vmlinux


@pytest.mark.parametrize(
    "compress", [gzip.compress, lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)]
)
def test_extract_vmlinux_other_compressions(compress: object) -> None:
    vmlinux = make_vmlinux()
    assert callable(compress)
    assert extract_vmlinux(make_bzimage(compress(vmlinux))) == vmlinux


def test_extract_vmlinux_setup_sects_zero_means_four() -> None:
    vmlinux = make_vmlinux()
    image = make_bzimage(zlib.compress(vmlinux, wbits=31), setup_sects=4)
    image = image[:0x1F1] + b"\x00" + image[0x1F2:]
    assert extract_vmlinux(image) == vmlinux


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"\x00" * 4096, "not a bzImage"),
        (make_bzimage(b"\x28\xb5\x2f\xfd" + b"\x00" * 32), "unsupported compression"),
        (make_bzimage(gzip.compress(b"not an elf")), "not an ELF"),
        (make_bzimage(b"\xfd7zXZ\x00garbage"), "cannot decompress"),
        (make_bzimage(gzip.compress(make_vmlinux()), version=0x0206), "older than 2.08"),
    ],
)
def test_extract_vmlinux_rejects(image: bytes, message: str) -> None:
    with pytest.raises(GuestBuildError, match=message):
        extract_vmlinux(image)


def test_pvh_entry() -> None:
    assert pvh_entry(make_vmlinux(0x1234567)) == 0x1234567
    assert pvh_entry(make_vmlinux(None)) is None
    with pytest.raises(GuestBuildError, match="64-bit"):
        pvh_entry(b"\x7fELF\x01\x01" + bytes(64))


def test_kernel_package_from_depends() -> None:
    assert (
        kernel_package_from_depends("linux-image-6.1.0-41-amd64 (= 6.1.158-1)")
        == "linux-image-6.1.0-41-amd64=6.1.158-1"
    )
    assert (
        kernel_package_from_depends("foo, linux-image-6.1.0-9-amd64") == "linux-image-6.1.0-9-amd64"
    )
    with pytest.raises(GuestBuildError, match="does not depend"):
        kernel_package_from_depends("linux-base, initramfs-tools")


# -- modules -----------------------------------------------------------------------------------


def test_module_name() -> None:
    assert module_name("kernel/arch/x86/crypto/crc32c-intel.ko") == "crc32c_intel"
    assert module_name("ext4.ko.xz") == "ext4"
    assert module_name("virtio_blk") == "virtio_blk"


def test_modinfo_reads_every_value() -> None:
    ko = make_ko({"name": "ext4", "depends": "mbcache,jbd2,crc16", "alias": "fs-ext4"})
    info = modinfo(ko)
    assert info["depends"] == ["mbcache,jbd2,crc16"]
    assert info["name"] == ["ext4"]
    with pytest.raises(GuestBuildError, match="64-bit"):
        modinfo(b"not an elf at all" * 10)


def _module_tree(
    tmp_path: Path, modules: dict[str, str], builtin: Sequence[str] = ()
) -> ModuleTree:
    root = tmp_path / "lib" / "modules" / "6.1.0-test-amd64"
    for rel, depends in modules.items():
        path = root / "kernel" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        content = make_ko({"depends": depends, "name": module_name(rel)})
        if rel.endswith(".xz"):
            content = lzma.compress(content)
        path.write_bytes(content)
    (root / "modules.builtin").write_text("".join(f"kernel/{b}\n" for b in builtin))
    return ModuleTree(root)


def test_resolve_modules_orders_dependencies_first(tmp_path: Path) -> None:
    tree = _module_tree(
        tmp_path,
        {
            "fs/ext4/ext4.ko": "mbcache,jbd2,crc16",
            "fs/mbcache.ko": "",
            "fs/jbd2/jbd2.ko": "",
            "lib/crc16.ko.xz": "",
            "drivers/virtio/virtio_pci.ko": "virtio_pci-modern-dev,virtio,virtio_ring",
            "drivers/virtio/virtio_pci-modern-dev.ko": "virtio_ring",
            "drivers/virtio/virtio_ring.ko": "",
        },
        builtin=["drivers/virtio/virtio.ko"],
    )
    order = resolve_modules(["virtio_pci", "ext4", "jbd2"], tree)
    names = [name for name, _ in order]
    assert names == [
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "mbcache",
        "jbd2",
        "crc16",
        "ext4",
    ]
    # compressed modules are stored uncompressed
    assert dict(order)["crc16"].startswith(b"\x7fELF")


def test_resolve_modules_errors(tmp_path: Path) -> None:
    tree = _module_tree(tmp_path, {"a.ko": "b", "b.ko": "a", "c.ko": "missing"})
    with pytest.raises(GuestBuildError, match="cycle"):
        resolve_modules(["a"], tree)
    with pytest.raises(GuestBuildError, match="missing is neither built into the kernel"):
        resolve_modules(["c"], tree)


def test_recipe_module_lists_parse() -> None:
    at_boot = parse_module_list(tools.recipe_text("modules").decode())
    assert at_boot[0] == "crc32c_generic"
    # what readiness needs: the root disk, the seed CD, the NIC, the ACPI power button
    assert set(at_boot) == {
        "crc32c_generic",
        "virtio_pci",
        "virtio_blk",
        "ext4",
        "isofs",
        "virtio_net",
        "button",
        "evdev",
    }
    assert parse_module_list(tools.recipe_text("modules-after-ready").decode()) == [
        "ata_piix",
        "sr_mod",
        "xhci_pci",
        "usbhid",
        "hid_generic",
        "usb_storage",
        "sd_mod",
    ]
    assert parse_module_list("# comment\n a-b  # trailing\n\n") == ["a_b"]


def test_strip_signature() -> None:
    ko = make_ko({"name": "ext4"})
    assert strip_signature(sign(ko)) == ko
    assert strip_signature(ko) == ko
    assert modinfo(strip_signature(sign(ko)))["name"] == ["ext4"]
    too_long = ko + bytes(8) + struct.pack(">I", len(ko) + 100) + SIGNATURE_MAGIC
    with pytest.raises(GuestBuildError, match="malformed signature"):
        strip_signature(too_long)


def test_hide_ftrace_call_sites() -> None:
    calls = struct.pack("<3Q", 0x10, 0x80, 0x200)
    ko = make_ko(
        {"name": "ext4"},
        [(".text", b"\xe8" * 16), ("__mcount_loc", calls), (".rela__mcount_loc", b"r" * 24)],
    )
    hidden = hide_ftrace_call_sites(ko)
    assert len(hidden) == len(ko)
    assert b"__mcount_loc\x00" not in hidden and b"__mcount_off\x00" in hidden
    # only the name changed: same content, .modinfo still found
    assert [a != b for a, b in zip(ko, hidden, strict=True)].count(True) <= 3
    assert calls in hidden and modinfo(hidden)["name"] == ["ext4"]
    without = make_ko({"name": "crc16"}, [(".text", b"\xc3")])
    assert hide_ftrace_call_sites(without) == without
    assert prepare_module(sign(ko)) == hidden


def test_module_directory_is_what_modprobe_reads(tmp_path: Path) -> None:
    tree = _module_tree(
        tmp_path,
        {
            "drivers/net/virtio_net.ko.xz": "net_failover,virtio,virtio_ring",
            "drivers/net/net_failover.ko": "failover",
            "net/core/failover.ko": "",
            "drivers/virtio/virtio_ring.ko": "",
            "fs/isofs/isofs.ko": "cdrom",
            "drivers/cdrom/cdrom.ko": "",
        },
        builtin=["drivers/virtio/virtio.ko"],
    )
    signed = tree.path("failover")
    assert signed is not None
    signed.write_bytes(sign(signed.read_bytes()))
    files = module_directory(["virtio_net", "isofs"], tree)
    assert files["modules.dep"].decode().splitlines() == [
        "kernel/net/core/failover.ko:",
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
        "kernel/drivers/virtio/virtio_ring.ko:",
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko"
        " kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko",
        "kernel/drivers/cdrom/cdrom.ko:",
        "kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko",
    ]
    # uncompressed, without signatures, under the name modprobe looks for
    assert files["kernel/drivers/net/virtio_net.ko"].startswith(b"\x7fELF")
    assert not files["kernel/net/core/failover.ko"].endswith(SIGNATURE_MAGIC)
    assert modinfo(files["kernel/net/core/failover.ko"])["name"] == ["failover"]
    assert len(files) == 7


# -- cpio --------------------------------------------------------------------------------------


def test_write_newc_is_read_by_cpio(tmp_path: Path) -> None:
    archive = io.BytesIO()
    write_newc(
        [
            CpioEntry("bin", 0o040755),
            CpioEntry("bin/busybox", 0o100755, b"#!fake\n" * 3),
            CpioEntry("bin/sh", 0o120777, b"busybox"),
            CpioEntry("dev", 0o040755),
            CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
            CpioEntry("init", 0o100755, b"x"),
        ],
        archive,
    )
    data = archive.getvalue()
    assert len(data) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines] == [
        "bin",
        "bin/busybox",
        "busybox",
        "dev",
        "dev/console",
        "init",
    ]
    assert lines[2].startswith("lrwxrwxrwx") and "bin/sh -> busybox" in lines[2]
    assert lines[4].startswith("crw-------") and "5,   1" in lines[4]
    assert all(" root " in line for line in lines)
    # extraction gives back the contents
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "bin/busybox", "init"],
        input=data,
        cwd=out,
        check=True,
    )
    assert (out / "bin" / "busybox").read_bytes() == b"#!fake\n" * 3
    assert stat.S_IMODE((out / "init").stat().st_mode) == 0o755


# -- keys --------------------------------------------------------------------------------------

PINS = [
    PackagePin("linux-image-6.1.0-41-amd64", "6.1.158-1", "k.deb", "a" * 64),
    PackagePin("busybox-static", "1:1.35.0-4", "b.deb", "b" * 64),
]


def test_recipe_key_depends_on_versions_only_through_pins() -> None:
    key = recipe_key(PINS)
    assert len(key) == 16 and int(key, 16) >= 0
    assert recipe_key(list(reversed(PINS))) == key
    changed = [PINS[0], PackagePin("busybox-static", "1:1.35.0-5", "b.deb", "b" * 64)]
    assert recipe_key(changed) != key
    rehashed = [PINS[0], PackagePin("busybox-static", "1:1.35.0-4", "b.deb", "c" * 64)]
    assert recipe_key(rehashed) != key


def test_recipe_key_covers_recipe_files(monkeypatch: pytest.MonkeyPatch) -> None:
    key = recipe_key(PINS)
    original = tools.recipe_files

    def patched() -> list[tuple[str, bytes]]:
        files = original()
        return [(n, c + b"\n# changed") if n == "rcS" else (n, c) for n, c in files]

    monkeypatch.setattr(build, "recipe_files", patched)
    assert recipe_key(PINS) != key


def test_recipe_key_covers_every_builder_module(monkeypatch: pytest.MonkeyPatch) -> None:
    package = Path(build.__file__).parent
    modules = {path.name for path in package.glob("*.py")} - {"__init__.py", "__main__.py"}
    original = build._builder_sources()
    assert {name for name, _ in original} == modules
    key = recipe_key(PINS)
    for changed in sorted(modules):
        sources = [(n, c + b"\n# changed" if n == changed else c) for n, c in original]
        monkeypatch.setattr(build, "_builder_sources", lambda sources=sources: sources)
        assert recipe_key(PINS) != key, changed


def test_every_recipe_file_is_used() -> None:
    names = {name for name, _ in tools.recipe_files()}
    used = set(rootfs._ROOT_FILES) | {"init", "modules"}
    assert names == used


# -- running tools -----------------------------------------------------------------------------


def test_run_failure_names_command_and_stderr() -> None:
    with pytest.raises(GuestBuildError) as info:
        tools.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
    message = str(info.value)
    assert "status 3" in message and "sh -c" in message and "the real reason" in message
    cause = info.value.__cause__
    assert isinstance(cause, ToolError) and cause.exitcode == 3


def test_run_missing_tool() -> None:
    with pytest.raises(GuestBuildError, match="not installed"):
        tools.run(["corral-no-such-tool-xyz"])


# -- packages: a fake apt-get serving tiny .deb files ------------------------------------------

FAKE_APT = """#!/bin/sh
echo "$*" >> "$FAKE_APT_LOG"
[ -n "$FAKE_APT_FAIL" ] && { echo "E: Failed to fetch: network is unreachable" >&2; exit 100; }
[ "$1" = download ] || exit 64
shift
for spec in "$@"; do
    case "$spec" in -*) continue ;; esac
    name="${spec%%=*}"
    version=
    case "$spec" in *=*) version="$(echo "${spec#*=}" | sed 's/:/%3a/')" ;; esac
    found=
    for deb in "$FAKE_REPO/${name}_"*.deb; do
        [ -e "$deb" ] || continue
        if [ -n "$version" ]; then
            case "$deb" in *"_${version}_"*) ;; *) continue ;; esac
        fi
        cp "$deb" .; found=1
    done
    [ -n "$found" ] || { echo "E: Unable to locate package $spec" >&2; exit 100; }
done
"""


def _make_deb(
    repo: Path, name: str, version: str, depends: str | None = None, payload: str = ""
) -> Path:
    root = repo / f"src-{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: t <t@t>\nDescription: test\n"
    )
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN" / "control").write_text(control)
    (root / "usr").mkdir()
    (root / "usr" / "payload").write_text(payload or f"{name} {version}")
    deb = repo / f"{name}_{version.replace(':', '%3a')}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", "-Zgzip", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)
    return deb


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake ``apt-get`` on PATH; its repository is the returned directory."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text(FAKE_APT)
    (bindir / "apt-get").chmod(0o755)
    repo = tmp_path / "repo"
    repo.mkdir()
    _make_deb(
        repo, "linux-image-amd64", "6.1.99-1", depends="linux-image-6.1.0-99-amd64 (= 6.1.99-1)"
    )
    _make_deb(repo, "linux-image-6.1.0-99-amd64", "6.1.99-1")
    _make_deb(repo, "busybox-static", "1:1.35.0-4")
    for name in debian.PROGRAM_PACKAGES:
        _make_deb(repo, name, "1.0-1")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_REPO", str(repo))
    monkeypatch.setenv("FAKE_APT_LOG", str(tmp_path / "apt.log"))
    yield repo


def _apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def _obtain(
    guest_root: Path, pins: Sequence[PackagePin] | None
) -> tuple[list[PackagePin], dict[str, Path]]:
    work = guest_root / ".build-test"
    work.mkdir(parents=True, exist_ok=True)
    try:
        return debian.obtain_packages(guest_root, pins, work, lambda phase, fraction: None)
    finally:
        shutil.rmtree(work)


def test_packages_resolved_through_the_meta_package(tmp_path: Path, fake_apt: Path) -> None:
    guest_root = tmp_path / "cache" / "guest"
    guest_root.mkdir(parents=True)
    pins, debs = _obtain(guest_root, None)
    assert [(p.name, p.version) for p in pins] == [
        ("linux-image-6.1.0-99-amd64", "6.1.99-1"),
        ("busybox-static", "1:1.35.0-4"),
        *((name, "1.0-1") for name in debian.PROGRAM_PACKAGES),
    ]
    assert _apt_calls(tmp_path) == [
        "download -q linux-image-amd64",
        "download -q linux-image-6.1.0-99-amd64=6.1.99-1 busybox-static "
        + " ".join(debian.PROGRAM_PACKAGES),
    ]
    for pin in pins:
        assert debs[pin.name] == guest_root / "debs" / pin.filename
        assert tools.sha256_file(debs[pin.name]) == pin.sha256


def test_pinned_packages_present_need_no_apt(tmp_path: Path, fake_apt: Path) -> None:
    guest_root = tmp_path / "cache" / "guest"
    guest_root.mkdir(parents=True)
    pins, _ = _obtain(guest_root, None)
    calls = len(_apt_calls(tmp_path))
    again, _ = _obtain(guest_root, pins)
    assert again == pins
    assert len(_apt_calls(tmp_path)) == calls


def test_missing_pinned_package_is_fetched_at_its_version(tmp_path: Path, fake_apt: Path) -> None:
    guest_root = tmp_path / "cache" / "guest"
    guest_root.mkdir(parents=True)
    pins, debs = _obtain(guest_root, None)
    debs["busybox-static"].unlink()
    # the archive moved on meanwhile: the pin still gets its own version
    _make_deb(fake_apt, "busybox-static", "1:1.36.0-1")
    again, debs = _obtain(guest_root, pins)
    assert again == pins
    assert _apt_calls(tmp_path)[-1] == "download -q busybox-static=1:1.35.0-4"
    assert tools.sha256_file(debs["busybox-static"]) == pins[1].sha256


def test_pinned_package_that_changed_is_refused(tmp_path: Path, fake_apt: Path) -> None:
    guest_root = tmp_path / "cache" / "guest"
    guest_root.mkdir(parents=True)
    pins, debs = _obtain(guest_root, None)
    debs["busybox-static"].unlink()
    (fake_apt / "busybox-static_1%3a1.35.0-4_amd64.deb").unlink()
    _make_deb(fake_apt, "busybox-static", "1:1.35.0-4", payload="rebuilt differently")
    with pytest.raises(GuestBuildError, match="force"):
        _obtain(guest_root, pins)


def test_packages_added_to_the_recipe_are_resolved_and_the_kernel_kept(
    tmp_path: Path, fake_apt: Path
) -> None:
    """Pins from before the SSH server: the kernel stays pinned, the new packages are added."""
    guest_root = tmp_path / "cache" / "guest"
    guest_root.mkdir(parents=True)
    pins, _ = _obtain(guest_root, None)
    old = [*pins[:2], PackagePin("no-longer-used", "1", "gone.deb", "0" * 64)]
    # the archive has a newer kernel now: the pinned one must stay
    _make_deb(
        fake_apt,
        "linux-image-amd64",
        "6.1.100-1",
        depends="linux-image-6.1.0-100-amd64 (= 6.1.100-1)",
    )
    _make_deb(fake_apt, "linux-image-6.1.0-100-amd64", "6.1.100-1")
    (guest_root / "debs" / pins[3].filename).unlink()
    again, debs = _obtain(guest_root, old)
    assert again == pins
    assert _apt_calls(tmp_path)[-1] == "download -q " + " ".join(debian.PROGRAM_PACKAGES)
    assert set(debs) == {p.name for p in pins}


def test_apt_failure_is_explained(
    tmp_path: Path, fake_apt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_APT_FAIL", "1")
    guest_root = tmp_path / "cache" / "guest"
    guest_root.mkdir(parents=True)
    with pytest.raises(GuestBuildError) as info:
        _obtain(guest_root, None)
    message = str(info.value)
    assert "apt-get update" in message and "network is unreachable" in message
    assert "apt-get download -q linux-image-amd64" in message


# -- the cache, with the expensive steps replaced ----------------------------------------------


class FakeSteps:
    """Stand-ins for package download and the build, counting their calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, version: str = "6.1.1-1") -> None:
        self.version = version
        self.builds = 0
        self.obtained: list[Sequence[PackagePin] | None] = []
        self.fail_with: Exception | None = None
        self.gate: threading.Event | None = None
        self.content = b"same"
        monkeypatch.setattr(build, "obtain_packages", self.obtain)
        monkeypatch.setattr(build, "_build_into", self.build_into)

    def obtain(
        self,
        guest_root: Path,
        pins: Sequence[PackagePin] | None,
        work: Path,
        report: tools.ProgressFn,
    ) -> tuple[list[PackagePin], dict[str, Path]]:
        self.obtained.append(pins)
        new = [
            PackagePin("linux-image-6.1.0-1-amd64", self.version, "k.deb", "1" * 64),
            PackagePin("busybox-static", "1:1", "b.deb", "2" * 64),
        ]
        return (list(pins) if pins is not None else new), {}

    def build_into(
        self,
        out: Path,
        key: str,
        pins: Sequence[PackagePin],
        debs: object,
        work: Path,
        report: tools.ProgressFn,
    ) -> None:
        self.builds += 1
        for phase in ("kernel", "initramfs", "rootfs", "qcow2"):
            report(phase, tools.PHASES[phase])
        if self.gate is not None:
            assert self.gate.wait(10)
        for name in build._GUEST_FILES:
            (out / name).write_bytes(self.content)
        if self.fail_with is not None:
            raise self.fail_with
        manifest = {
            "format": build._FORMAT,
            "key": key,
            "kernel_version": "6.1.0-1-amd64",
            "cmdline": build.KERNEL_CMDLINE,
            "ready_marker": build.READY_MARKER,
            "files": {n: tools.sha256_file(out / n) for n in build._GUEST_FILES},
        }
        (out / "manifest.json").write_text(json.dumps(manifest))


def _leftovers(cache: Path) -> list[str]:
    return sorted(
        p.name for p in (cache / "guest").iterdir() if p.name.startswith(".") and p.name != ".lock"
    )


def test_build_then_cached_without_running_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = FakeSteps(monkeypatch)
    phases: list[tuple[str, float]] = []
    guest = build.build_reference_guest(tmp_path, progress=lambda p, f: phases.append((p, f)))
    assert steps.builds == 1
    assert guest.dir == tmp_path / "guest" / guest.key
    assert guest.vmlinux.is_file() and guest.rootdisk.name == "root.qcow2"
    assert guest.cmdline == build.KERNEL_CMDLINE and guest.ready_marker == "corral-ready"
    assert [p for p, _ in phases] == ["kernel", "initramfs", "rootfs", "qcow2", "done"]
    fractions = [f for _, f in phases]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert _leftovers(tmp_path) == []

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached guest must not run anything")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    again = build.build_reference_guest(tmp_path)
    assert again == guest
    assert steps.builds == 1
    assert build.cached_reference_guest(tmp_path) == guest


def test_recipe_change_rebuilds_with_the_same_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = FakeSteps(monkeypatch)
    first = build.build_reference_guest(tmp_path)
    original = tools.recipe_files
    monkeypatch.setattr(build, "recipe_files", lambda: [*original(), ("extra", b"x")])
    assert build.cached_reference_guest(tmp_path) is None
    second = build.build_reference_guest(tmp_path)
    assert second.key != first.key and steps.builds == 2
    assert steps.obtained[-1] is not None  # re-used the pins: no new resolution
    assert first.dir.is_dir()  # the older build stays for whoever uses it


def test_force_resolves_again_and_keeps_identical_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = FakeSteps(monkeypatch)
    first = build.build_reference_guest(tmp_path)
    inode = first.rootdisk.stat().st_ino
    same = build.build_reference_guest(tmp_path, force=True)
    assert steps.builds == 2 and steps.obtained[-1] is None
    assert same == first
    assert first.rootdisk.stat().st_ino == inode  # identical rebuild: files left in place
    steps.content = b"different"
    replaced = build.build_reference_guest(tmp_path, force=True)
    assert replaced.key == first.key and replaced.rootdisk.read_bytes() == b"different"
    steps.version = "6.1.2-1"
    newer = build.build_reference_guest(tmp_path, force=True)
    assert newer.key != first.key
    assert build.cached_reference_guest(tmp_path) == newer
    assert _leftovers(tmp_path) == []


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = FakeSteps(monkeypatch)
    steps.fail_with = GuestBuildError("mkfs.ext4 exploded")
    with pytest.raises(GuestBuildError, match="exploded"):
        build.build_reference_guest(tmp_path)
    assert sorted(p.name for p in (tmp_path / "guest").iterdir()) == [".lock"]
    assert build.cached_reference_guest(tmp_path) is None
    steps.fail_with = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        build.build_reference_guest(tmp_path)
    assert sorted(p.name for p in (tmp_path / "guest").iterdir()) == [".lock"]


def test_stale_work_dirs_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSteps(monkeypatch)
    stale = tmp_path / "guest" / ".build-killed"
    (stale / "sub").mkdir(parents=True)
    (tmp_path / "guest" / ".packages.json.x1").write_text("{")
    build.build_reference_guest(tmp_path)
    assert _leftovers(tmp_path) == []


def test_concurrent_builders_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = FakeSteps(monkeypatch)
    steps.gate = threading.Event()
    results: list[build.ReferenceGuest] = []
    waited: list[str] = []
    errors: list[BaseException] = []

    def builder(progress: tools.ProgressFn) -> None:
        try:
            results.append(build.build_reference_guest(tmp_path, progress=progress))
        except BaseException as exc:
            errors.append(exc)

    first_started = threading.Event()
    first = threading.Thread(
        target=builder, args=(lambda p, f: first_started.set() if p == "kernel" else None,)
    )
    first.start()
    assert first_started.wait(10)
    second_waiting = threading.Event()

    def second_progress(phase: str, fraction: float) -> None:
        waited.append(phase)
        if phase == "waiting":
            second_waiting.set()

    second = threading.Thread(target=builder, args=(second_progress,))
    second.start()
    assert second_waiting.wait(10)
    steps.gate.set()
    first.join(10)
    second.join(10)
    assert not errors
    assert steps.builds == 1
    assert len(results) == 2 and results[0] == results[1]
    assert waited == ["waiting", "done"]


def test_unwritable_cache_is_a_build_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSteps(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GuestBuildError, match="cannot create the guest cache"):
        build.build_reference_guest(blocker / "cache")
