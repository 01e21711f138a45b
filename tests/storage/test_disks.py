"""Per-VM disks: linked clones, blank disks, usage, removal (real qemu-img and qemu-io)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.errors import AlreadyExists, ImageError, InvalidInput, NotFound
from corral.storage.disks import (
    DiskUsage,
    create_blank,
    create_clone,
    disk_usage,
    remove_disk,
)
from corral.units import GiB, MiB

Tool = Callable[..., str]
Info = Callable[[Path, str], dict[str, Any]]


@pytest.fixture
def base(tmp_path: Path, qemu_img: Tool, qemu_io: Tool) -> Path:
    """A 2 GiB read-only qcow2 image with some data."""
    path = tmp_path / "images" / "base.qcow2"
    path.parent.mkdir()
    qemu_img("create", "-f", "qcow2", path, str(2 * GiB))
    qemu_io("qcow2", path, "write -P 0x42 0 2M")
    path.chmod(0o444)
    return path


@pytest.fixture
def vm_dir(tmp_path: Path) -> Path:
    path = tmp_path / "vms" / "web"
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("gib", [1, 10, 100])
def test_clone_of_sparse_bases_of_any_size(
    tmp_path: Path, qemu_img: Tool, image_info: Info, gib: int
) -> None:
    big = tmp_path / f"base-{gib}G.qcow2"
    qemu_img("create", "-f", "qcow2", big, f"{gib}G")
    clone = tmp_path / "clone.qcow2"
    create_clone(big, clone)
    info = image_info(clone, "qcow2")
    assert info["backing-filename"] == str(big)
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == gib * GiB
    assert clone.stat().st_size < MiB


def test_clone_stores_an_absolute_backing_name(
    base: Path, vm_dir: Path, image_info: Info, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(base.parent)
    create_clone(Path(base.name), vm_dir / "root.qcow2")
    assert image_info(vm_dir / "root.qcow2", "qcow2")["backing-filename"] == str(base)


def test_writing_to_a_clone_leaves_the_base_unchanged(
    base: Path,
    vm_dir: Path,
    qemu_io: Tool,
    file_sha256: Callable[[Path], str],
) -> None:
    before = file_sha256(base)
    clone = vm_dir / "root.qcow2"
    create_clone(base, clone)
    qemu_io("qcow2", clone, "write -P 0x99 0 1M", "write -P 0x77 1G 1M")
    assert file_sha256(base) == before
    assert "verification failed" not in qemu_io("qcow2", clone, "read -P 0x99 0 1M")
    assert "verification failed" not in qemu_io("qcow2", clone, "read -P 0x42 1M 1M")
    assert "verification failed" not in qemu_io("qcow2", base, "read -P 0x42 0 2M")


def test_clone_grows_to_a_larger_size(base: Path, vm_dir: Path, image_info: Info) -> None:
    clone = vm_dir / "root.qcow2"
    create_clone(base, clone, 20 * GiB)
    info = image_info(clone, "qcow2")
    assert info["virtual-size"] == 20 * GiB
    assert info["backing-filename"] == str(base)


def test_clone_of_the_same_size(base: Path, vm_dir: Path, image_info: Info) -> None:
    create_clone(base, vm_dir / "root.qcow2", 2 * GiB)
    assert image_info(vm_dir / "root.qcow2", "qcow2")["virtual-size"] == 2 * GiB


def test_clone_cannot_shrink(base: Path, vm_dir: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        create_clone(base, vm_dir / "root.qcow2", GiB)
    assert caught.value.field == "size"
    assert caught.value.reason == "1 GiB cannot shrink below the image's 2 GiB"
    assert list(vm_dir.iterdir()) == []


@pytest.mark.parametrize("size", [0, -512, 3 * GiB + 1])
def test_clone_size_must_be_positive_whole_sectors(base: Path, vm_dir: Path, size: int) -> None:
    with pytest.raises(InvalidInput, match="size"):
        create_clone(base, vm_dir / "root.qcow2", size)


def test_clone_refuses_existing_destination(base: Path, vm_dir: Path) -> None:
    existing = vm_dir / "root.qcow2"
    existing.write_bytes(b"guest data")
    with pytest.raises(AlreadyExists):
        create_clone(base, existing)
    assert existing.read_bytes() == b"guest data"


def test_clone_of_missing_or_non_qcow2_base(tmp_path: Path, vm_dir: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        create_clone(tmp_path / "nope.qcow2", vm_dir / "root.qcow2")
    raw = tmp_path / "a.raw"
    raw.write_bytes(bytes(4096))
    with pytest.raises(ImageError, match="not a qcow2 image"):
        create_clone(raw, vm_dir / "root.qcow2")
    assert list(vm_dir.iterdir()) == []


def test_clone_file_is_private(base: Path, vm_dir: Path) -> None:
    create_clone(base, vm_dir / "root.qcow2")
    assert stat.S_IMODE((vm_dir / "root.qcow2").stat().st_mode) == 0o600


def test_blank_disk(vm_dir: Path, image_info: Info) -> None:
    create_blank(vm_dir / "data.qcow2", 10 * GiB)
    info = image_info(vm_dir / "data.qcow2", "qcow2")
    assert info["virtual-size"] == 10 * GiB
    assert "backing-filename" not in info


def test_blank_disk_refuses_bad_size_and_existing_file(vm_dir: Path) -> None:
    with pytest.raises(InvalidInput):
        create_blank(vm_dir / "data.qcow2", 1000)
    create_blank(vm_dir / "data.qcow2", GiB)
    with pytest.raises(AlreadyExists):
        create_blank(vm_dir / "data.qcow2", GiB)


def test_usage_of_a_blank_disk_before_and_after_writing(vm_dir: Path, qemu_io: Tool) -> None:
    disk = vm_dir / "data.qcow2"
    create_blank(disk, 8 * GiB)
    empty = disk_usage(disk)
    assert empty.provisioned == 8 * GiB
    assert 0 < empty.used < MiB
    qemu_io("qcow2", disk, "write -P 0x1 0 16M")
    written = disk_usage(disk)
    assert written.provisioned == 8 * GiB
    assert written.used >= empty.used + 16 * MiB
    assert written.used == disk.stat().st_blocks * 512


def test_usage_of_a_clone_counts_only_its_own_blocks(
    base: Path, vm_dir: Path, qemu_io: Tool
) -> None:
    clone = vm_dir / "root.qcow2"
    create_clone(base, clone, 4 * GiB)
    assert disk_usage(clone).provisioned == 4 * GiB
    assert disk_usage(clone).used < MiB
    qemu_io("qcow2", clone, "write 0 4M")
    assert 4 * MiB <= disk_usage(clone).used < 5 * MiB


def test_usage_of_a_sparse_raw_disk(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as file:
        file.truncate(3 * GiB)
        file.seek(GiB)
        file.write(b"\1" * MiB)
    usage = disk_usage(raw)
    assert usage.provisioned == 3 * GiB
    assert MiB <= usage.used < 2 * MiB
    assert disk_usage(raw, "raw") == usage


def test_usage_with_a_given_format(tmp_path: Path, qemu_img: Tool) -> None:
    disk = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", disk, "100G")
    assert disk_usage(disk, "qcow2").provisioned == 100 * GiB
    assert disk_usage(disk, "raw") == DiskUsage(
        provisioned=disk.stat().st_size, used=disk.stat().st_blocks * 512
    )


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        disk_usage(tmp_path / "nope.qcow2")
    with pytest.raises(ImageError, match="directory"):
        disk_usage(tmp_path)
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb\0\0\0\x07")
    with pytest.raises(ImageError, match="not a qcow2 disk"):
        disk_usage(bad, "qcow2")


def test_remove_disk(vm_dir: Path, tmp_path: Path) -> None:
    disk = vm_dir / "data.qcow2"
    create_blank(disk, GiB)
    remove_disk(disk)
    assert not disk.exists()
    remove_disk(disk)
    with pytest.raises(ImageError, match="not a regular file"):
        remove_disk(vm_dir)
    target = tmp_path / "target"
    target.write_bytes(b"x")
    link = vm_dir / "link.qcow2"
    link.symlink_to(target)
    with pytest.raises(ImageError, match="not a regular file"):
        remove_disk(link)
    assert target.exists()
    assert os.path.lexists(link)
