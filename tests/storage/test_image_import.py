"""Importing untrusted files with the real qemu-img: what is accepted, what is refused, and
that nothing is left behind."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral.errors import AlreadyExists, HostError, ImageError, InvalidInput
from corral.storage import images
from corral.storage.images import convert_file, import_image
from corral.storage.verify import verify_image
from corral.units import MiB

Tool = Callable[..., str]
Info = Callable[[Path, str], dict[str, Any]]

SIZE = 64 * MiB


@pytest.fixture
def source_raw(tmp_path: Path, qemu_img: Tool, qemu_io: Tool) -> Path:
    """A 64 MiB raw disk with two written regions and holes between."""
    path = tmp_path / "src" / "disk.raw"
    path.parent.mkdir()
    qemu_img("create", "-f", "raw", path, str(SIZE))
    qemu_io("raw", path, "write -P 0x11 0 1M", "write -P 0x22 40M 3M")
    return path


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """The image catalogue's directory."""
    path = tmp_path / "images"
    path.mkdir()
    return path


def convert_to(qemu_img: Tool, raw: Path, fmt: str, *options: str) -> Path:
    out = raw.with_name(f"disk-{fmt}-{'-'.join(o.split('=')[-1] for o in options)}.{fmt}")
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, out)
    return out


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- accepted -------------------------------------------------------------------------------

SOURCES = [
    ("raw", ()),
    ("qcow2", ()),
    ("qcow2", ("-c",)),
    ("vmdk", ("-o", "subformat=monolithicSparse")),
    ("vmdk", ("-o", "subformat=streamOptimized")),
    ("vdi", ()),
]


@pytest.mark.parametrize(("fmt", "options"), SOURCES, ids=lambda v: "-".join(v) or "plain")
@pytest.mark.parametrize("declare", [False, True], ids=["detected", "declared"])
def test_import(
    source_raw: Path,
    catalogue: Path,
    qemu_img: Tool,
    image_info: Info,
    file_sha256: Callable[[Path], str],
    fmt: str,
    options: tuple[str, ...],
    declare: bool,
) -> None:
    src = source_raw if fmt == "raw" else convert_to(qemu_img, source_raw, fmt, *options)
    dest = catalogue / "debian.qcow2"
    seen: list[float] = []

    imported = import_image(src, dest, fmt if declare else None, seen.append)

    assert imported.path == dest
    assert imported.source_format == fmt
    assert imported.virtual_size == SIZE
    assert imported.sha256 == file_sha256(dest)
    assert 0 < imported.actual_size < SIZE
    assert seen[-1] == 1.0
    assert all(0.0 <= fraction <= 1.0 for fraction in seen)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    info = image_info(dest, "qcow2")
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == SIZE
    assert "backing-filename" not in info
    assert "data-file" not in info["format-specific"]["data"]
    qemu_img("compare", "-f", "raw", "-F", "qcow2", source_raw, dest)
    assert leftovers(catalogue) == ["debian.qcow2"]


def test_import_of_qcow2_is_a_conversion_not_a_copy(
    source_raw: Path, catalogue: Path, qemu_img: Tool, image_info: Info
) -> None:
    src = convert_to(qemu_img, source_raw, "qcow2", "-o", "compat=0.10")
    qemu_img("snapshot", "-c", "before", src)
    imported = import_image(src, catalogue / "a.qcow2")
    info = image_info(imported.path, "qcow2")
    assert info["format-specific"]["data"]["compat"] == "1.1"
    assert "snapshots" not in info


def test_verify_reports_without_importing(source_raw: Path, qemu_img: Tool) -> None:
    src = convert_to(qemu_img, source_raw, "vdi")
    verified = verify_image(src)
    assert verified.format == "vdi"
    assert verified.info.virtual_size == SIZE
    assert verified.check.supported
    assert verified.check.clean
    assert verified.info.filename == str(src)
    sparse = verify_image(convert_to(qemu_img, source_raw, "vmdk"))
    assert [e.filename for e in sparse.info.vmdk_extents] == [sparse.info.filename]
    assert not verify_image(source_raw).check.supported


@pytest.mark.parametrize("to", ["raw", "qcow2", "vmdk", "vdi"])
def test_convert_file_to_each_format(
    source_raw: Path, tmp_path: Path, qemu_img: Tool, image_info: Info, to: str
) -> None:
    src = convert_to(qemu_img, source_raw, "qcow2")
    src.chmod(0o640)
    dest = tmp_path / f"out.{to}"
    seen: list[float] = []
    converted = convert_file(src, dest, to, None, seen.append)
    assert (converted.path, converted.source_format, converted.format) == (dest, "qcow2", to)
    assert converted.virtual_size == SIZE
    assert seen[-1] == 1.0
    assert image_info(dest, to)["format"] == to
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    qemu_img("compare", "-f", "raw", "-F", to, source_raw, dest)
    assert not list(tmp_path.glob(".*.part"))


def test_convert_file_verifies_like_import(tmp_path: Path, qemu_img: Tool) -> None:
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "1M")
    with pytest.raises(ImageError, match="backing file"):
        convert_file(evil, tmp_path / "out.raw", "raw")
    assert not (tmp_path / "out.raw").exists()


def test_convert_file_refuses_unknown_target_and_existing_dest(
    source_raw: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput) as caught:
        convert_file(source_raw, tmp_path / "out.vhdx", "vhdx")
    assert caught.value.field == "to"
    with pytest.raises(AlreadyExists):
        convert_file(source_raw, source_raw, "raw")


# --- refused: references to other files -----------------------------------------------------


def test_refuses_qcow2_with_backing_file(source_raw: Path, catalogue: Path, qemu_img: Tool) -> None:
    overlay = source_raw.with_name("overlay.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", source_raw, "-F", "raw", overlay)
    with pytest.raises(ImageError, match=f"backing file '{source_raw}'"):
        import_image(overlay, catalogue / "a.qcow2")
    assert leftovers(catalogue) == []


def test_refuses_qcow2_with_backing_file_to_host_secrets(
    tmp_path: Path, catalogue: Path, qemu_img: Tool
) -> None:
    overlay = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", overlay, "1M")
    with pytest.raises(ImageError, match="backing file '/etc/shadow'"):
        import_image(overlay, catalogue / "a.qcow2", "qcow2")


def test_refuses_qcow2_with_external_data_file(
    tmp_path: Path, catalogue: Path, qemu_img: Tool
) -> None:
    path = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'ext.data'}", path, "64M")
    with pytest.raises(ImageError, match="external data file"):
        import_image(path, catalogue / "a.qcow2")
    assert leftovers(catalogue) == []


@pytest.mark.parametrize(
    "subformat", ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]
)
def test_refuses_vmdk_descriptor_with_separate_extents(
    source_raw: Path, catalogue: Path, qemu_img: Tool, subformat: str
) -> None:
    src = convert_to(qemu_img, source_raw, "vmdk", "-o", f"subformat={subformat}")
    with pytest.raises(ImageError, match=f"VMDK descriptor \\(create type {subformat}\\)"):
        import_image(src, catalogue / "a.qcow2")
    with pytest.raises(ImageError, match="VMDK descriptor"):
        import_image(src, catalogue / "a.qcow2", "vmdk")
    assert leftovers(catalogue) == []


def test_vmdk_descriptor_is_refused_before_qemu_img_opens_its_extents(
    tmp_path: Path, catalogue: Path
) -> None:
    # Were qemu-img to open this extent (a FIFO), it would block until killed.
    fifo = tmp_path / "extent.fifo"
    os.mkfifo(fifo)
    descriptor = tmp_path / "evil.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n'
        f'RW 2048 FLAT "{fifo}" 0\n'
    )
    with pytest.raises(ImageError, match="VMDK descriptor"):
        import_image(descriptor, catalogue / "a.qcow2")


def test_refuses_sparse_vmdk_with_parent(source_raw: Path, catalogue: Path, qemu_img: Tool) -> None:
    parent = convert_to(qemu_img, source_raw, "vmdk")
    child = source_raw.with_name("child.vmdk")
    qemu_img("create", "-f", "vmdk", "-b", parent, "-F", "vmdk", child)
    with pytest.raises(ImageError, match=f"backing file '{parent}'"):
        import_image(child, catalogue / "a.qcow2")


def test_refuses_encrypted_qcow2(tmp_path: Path, catalogue: Path, qemu_img: Tool) -> None:
    path = tmp_path / "enc.qcow2"
    # qemu-img times its LUKS key derivation by CPU usage and, on a loaded host, now and then
    # fails with "Unable to get accurate CPU usage": that is the fixture's tool, so try again.
    for attempt in range(5):
        try:
            qemu_img(
                "create",
                "-f",
                "qcow2",
                "--object",
                "secret,id=s0,data=password",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=200",
                path,
                "16M",
            )
            break
        except subprocess.CalledProcessError:
            if attempt == 4:
                raise
    with pytest.raises(ImageError, match="encrypted"):
        import_image(path, catalogue / "a.qcow2")


# --- refused: corrupt -----------------------------------------------------------------------


@pytest.fixture
def written_qcow2(tmp_path: Path, qemu_img: Tool, qemu_io: Tool) -> Path:
    path = tmp_path / "data.qcow2"
    qemu_img("create", "-f", "qcow2", path, "64M")
    qemu_io("qcow2", path, "write -P 0xab 0 4M")
    return path


def test_refuses_qcow2_with_broken_l1_table_offset(written_qcow2: Path, catalogue: Path) -> None:
    with written_qcow2.open("r+b") as file:
        file.seek(40)
        file.write(struct.pack(">Q", 0x7FFFFE00))
    with pytest.raises(ImageError, match=r"not a valid qcow2 image: .*L1 table"):
        import_image(written_qcow2, catalogue / "a.qcow2")
    assert leftovers(catalogue) == []


def test_refuses_truncated_qcow2(written_qcow2: Path, catalogue: Path) -> None:
    os.truncate(written_qcow2, MiB)
    with pytest.raises(ImageError, match=r"corrupt: qemu-img check found \d+ errors"):
        import_image(written_qcow2, catalogue / "a.qcow2")
    assert leftovers(catalogue) == []


def test_refuses_qcow2_with_wrong_refcount(written_qcow2: Path, catalogue: Path) -> None:
    with written_qcow2.open("r+b") as file:
        header = file.read(104)
        (table,) = struct.unpack_from(">Q", header, 48)
        file.seek(table)
        (block,) = struct.unpack(">Q", file.read(8))
        file.seek(block)
        file.write(b"\0\0")  # the header cluster's refcount: 0, but it is in use
    with pytest.raises(ImageError, match="corrupt: qemu-img check found 1 errors"):
        import_image(written_qcow2, catalogue / "a.qcow2")


def test_refuses_qcow2_header_garbage(tmp_path: Path, catalogue: Path) -> None:
    path = tmp_path / "garbage.qcow2"
    path.write_bytes(b"QFI\xfb" + struct.pack(">I", 9) + bytes(200))
    with pytest.raises(ImageError, match="corrupt qcow2 header: qcow2 version 9"):
        import_image(path, catalogue / "a.qcow2")


# --- refused: format confusion --------------------------------------------------------------


def test_refuses_qcow2_declared_raw(written_qcow2: Path, catalogue: Path) -> None:
    with pytest.raises(ImageError) as caught:
        import_image(written_qcow2, catalogue / "a.qcow2", "raw")
    assert "declared raw" in caught.value.reason
    assert "header says qcow2" in caught.value.reason
    assert leftovers(catalogue) == []


def test_refuses_raw_declared_qcow2(source_raw: Path, catalogue: Path) -> None:
    with pytest.raises(ImageError, match="declared qcow2 but its header says raw"):
        import_image(source_raw, catalogue / "a.qcow2", "qcow2")


def test_raw_disk_whose_guest_wrote_a_qcow2_header_is_not_opened_as_qcow2(
    tmp_path: Path, catalogue: Path, qemu_img: Tool
) -> None:
    # The classic attack: a guest writes a qcow2 header naming a host file as backing file
    # into its raw disk; the disk is later "imported as raw".
    raw = tmp_path / "guest.raw"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", raw, "1M")
    with pytest.raises(ImageError, match="declared raw but its header says qcow2"):
        import_image(raw, catalogue / "a.qcow2", "raw")
    with pytest.raises(ImageError, match="backing file '/etc/shadow'"):
        import_image(raw, catalogue / "a.qcow2")


def test_refuses_unknown_format_name(source_raw: Path, catalogue: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        import_image(source_raw, catalogue / "a.qcow2", "vhdx")
    assert caught.value.field == "format"


# --- refused: not an image file -------------------------------------------------------------


def test_refuses_empty_file(tmp_path: Path, catalogue: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.touch()
    with pytest.raises(ImageError, match="is empty"):
        import_image(empty, catalogue / "a.qcow2")


def test_refuses_missing_file(tmp_path: Path, catalogue: Path) -> None:
    with pytest.raises(ImageError, match="does not exist") as caught:
        import_image(tmp_path / "nope.img", catalogue / "a.qcow2")
    assert caught.value.path == str(tmp_path / "nope.img")


def test_refuses_directory(tmp_path: Path, catalogue: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        import_image(tmp_path, catalogue / "a.qcow2")


def test_refuses_fifo(tmp_path: Path, catalogue: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        import_image(fifo, catalogue / "a.qcow2")


def test_refuses_existing_destination(source_raw: Path, catalogue: Path) -> None:
    (catalogue / "a.qcow2").write_bytes(b"precious")
    with pytest.raises(AlreadyExists):
        import_image(source_raw, catalogue / "a.qcow2")
    assert (catalogue / "a.qcow2").read_bytes() == b"precious"


def test_refuses_when_space_is_short(
    source_raw: Path, catalogue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(_: object) -> SimpleNamespace:
        return SimpleNamespace(total=10 * MiB, used=10 * MiB, free=0)

    monkeypatch.setattr(images.shutil, "disk_usage", full)
    with pytest.raises(HostError, match="not enough space"):
        import_image(source_raw, catalogue / "a.qcow2")
    assert leftovers(catalogue) == []


# --- failure leaves nothing behind ----------------------------------------------------------


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_failed_import_leaves_no_temporary_file(
    source_raw: Path, catalogue: Path, exception: type[BaseException]
) -> None:
    def fail(percent: float) -> None:
        raise exception(f"stopped at {percent}")

    with pytest.raises(exception):
        import_image(source_raw, catalogue / "a.qcow2", progress=fail)
    assert leftovers(catalogue) == []


def test_import_reads_the_file_it_verified(
    source_raw: Path, catalogue: Path, qemu_img: Tool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once the checks have passed, rename a qcow2 naming a host file as backing file over the
    # source's name: the conversion still reads the file that was verified.
    original = source_raw.with_name("original.raw")
    original.write_bytes(source_raw.read_bytes())
    evil = source_raw.with_name("evil.qcow2")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", evil, "1M")
    real_measure = images.img.measure

    def measure_then_swap(*args: Any, **kwargs: Any) -> Any:
        evil.rename(source_raw)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(images.img, "measure", measure_then_swap)
    imported = import_image(source_raw, catalogue / "a.qcow2")
    assert not evil.exists()
    assert imported.source_format == "raw"
    qemu_img("compare", "-f", "raw", "-F", "qcow2", original, imported.path)
