"""``corral volume import`` and ``export``: the real command against its daemon, with files
made by qemu-img (vmdk, vdi, an OVA of an OVF and a VMDK) and checked by ``qemu-img compare``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.compute.context import Corral
from corral.config import Home
from corral.storage.volumes import pool_dir, volume_path
from corral.store.models import VolumeRow
from corral.units import MiB
from tests import daemons
from tests.integration.conftest import cli

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
{files}
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
{disks}
  </DiskSection>
</Envelope>
"""


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A fresh state directory (short path: the daemon's socket lives in it)."""
    root = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
    yield root
    daemons.stop(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cxw-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def _raw(path: Path, size: int = 4 * MiB, seed: int = 0) -> Path:
    """A raw disk with a pattern in some places and holes in others."""
    with path.open("wb") as file:
        file.truncate(size)
        for offset in range(0, size, MiB):
            file.seek(offset + seed * 4096)
            file.write(bytes([(offset // MiB + seed) % 251 + 1]) * 8192)
    return path


def _made(src: Path, fmt: str, dest: Path) -> Path:
    done = _img("convert", "-f", "raw", "-O", fmt, str(src), str(dest))
    assert done.returncode == 0, done.stderr
    return dest


def _rows(home: Path) -> dict[str, VolumeRow]:
    ctx = Corral(Home(home))
    try:
        with ctx.db.session() as session:
            return {r.name: r for r in session.scalars(select(VolumeRow))}
    finally:
        ctx.close()


def _pool(home: Path) -> set[str]:
    pool = pool_dir(home)
    return set(os.listdir(pool)) if pool.exists() else set()


def _same(a: Path, a_fmt: str, b: Path, b_fmt: str) -> None:
    done = _img("compare", "-f", a_fmt, "-F", b_fmt, str(a), str(b))
    assert done.returncode == 0, done.stdout + done.stderr


def _info(path: Path, fmt: str) -> dict[str, Any]:
    done = _img("info", "-f", fmt, "--output=json", str(path))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _volume_file(home: Path, name: str) -> Path:
    return volume_path(home, _rows(home)[name].id, "qcow2")


@pytest.mark.parametrize("fmt", ["vmdk", "vdi"])
def test_import_then_export_round_trips(home: Path, work: Path, fmt: str) -> None:
    original = _raw(work / f"orig-{fmt}.raw", seed=1 if fmt == "vdi" else 0)
    source = _made(original, fmt, work / f"disk.{fmt}")
    name = f"from-{fmt}"

    done = cli(home, "volume", "import", name, str(source), "--project", "default")
    assert done.returncode == 0, done.stderr
    assert f"{name} (4 MiB)" in done.stdout

    path = _volume_file(home, name)
    info = _info(path, "qcow2")
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * MiB
    assert "backing-filename" not in info
    assert path.stat().st_mode & 0o777 == 0o600
    _same(original, "raw", path, "qcow2")

    listed = cli(home, "volume", "info", name, "--json")
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert shown["size"] == 4 * MiB and 0 < shown["used"] < 4 * MiB  # provisioned vs used

    exported = work / f"back-{fmt}.raw"
    out = cli(home, "volume", "export", name, str(exported), "--format", "raw")
    assert out.returncode == 0, out.stderr
    assert exported.stat().st_size == 4 * MiB
    _same(original, "raw", exported, "raw")
    assert not [p for p in _pool(home) if p.startswith(".export-")]  # the copy is gone
    assert not list(work.glob(".back-*"))  # nothing half-written beside the file


def test_export_to_vmdk_is_read_back_equal(home: Path, work: Path) -> None:
    original = _raw(work / "orig-x.raw", seed=2)
    assert cli(home, "volume", "import", "for-x", str(original), "-f", "raw").returncode == 0
    exported = work / "x.vmdk"
    out = cli(home, "volume", "export", "for-x", str(exported), "--format", "vmdk")
    assert out.returncode == 0, out.stderr
    assert _info(exported, "vmdk")["format"] == "vmdk"
    _same(original, "raw", exported, "vmdk")


def _ova(work: Path, name: str, disks: list[Path], extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    files = "\n".join(
        f'    <File ovf:id="file{i}" ovf:href="{d.name}"/>' for i, d in enumerate(disks)
    )
    refs = "\n".join(
        f'    <Disk ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:capacity="4194304"/>'
        for i in range(len(disks))
    )
    ovf = work / f"{name}.ovf"
    ovf.write_text(OVF.format(files=files, disks=refs))
    path = work / f"{name}.ova"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        archive.add(ovf, arcname=ovf.name)
        for disk in disks:
            archive.add(disk, arcname=disk.name)
        for member in extra:
            archive.addfile(member)
    return path


def test_import_an_ova_makes_one_volume_per_disk(home: Path, work: Path) -> None:
    first, second = _raw(work / "ova-a.raw", seed=3), _raw(work / "ova-b.raw", seed=4)
    disks = [_made(first, "vmdk", work / "a.vmdk"), _made(second, "vmdk", work / "b.vmdk")]
    ova = _ova(work, "appliance", disks)

    done = cli(home, "volume", "import", "app", str(ova))
    assert done.returncode == 0, done.stderr
    rows = _rows(home)
    assert {"app", "app-1"} <= set(rows)
    _same(first, "raw", _volume_file(home, "app"), "qcow2")
    _same(second, "raw", _volume_file(home, "app-1"), "qcow2")
    assert not [p for p in _pool(home) if p.startswith(".ova-")]  # the unpacked disks are gone


def _refused(home: Path, name: str, source: Path, *words: str) -> None:
    """The import of ``source`` fails naming ``words``, and leaves no row and no file."""
    rows, pool = set(_rows(home)), _pool(home)
    done = cli(home, "volume", "import", name, str(source))
    assert done.returncode != 0
    for word in words:
        assert word in done.stderr, done.stderr
    assert set(_rows(home)) == rows
    assert _pool(home) == pool


def test_an_ova_with_a_link_or_escaping_member_is_refused(home: Path, work: Path) -> None:
    disk = _made(_raw(work / "ova-c.raw"), "vmdk", work / "c.vmdk")
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _refused(home, "bad-ova", _ova(work, "linked", [disk], (link,)), "link or special file")
    escape = tarfile.TarInfo("../../evil")
    _refused(home, "bad-ova", _ova(work, "escape", [disk], (escape,)), "plain relative name")


def test_an_ova_whose_disk_is_missing_is_refused(home: Path, work: Path) -> None:
    disk = _made(_raw(work / "ova-d.raw"), "vmdk", work / "d.vmdk")
    ova = _ova(work, "missing", [disk])
    with tarfile.open(ova) as archive:
        kept = [m for m in archive.getmembers() if m.name.endswith(".ovf")]
        ovf_bytes = archive.extractfile(kept[0]).read()  # type: ignore[union-attr]
    (work / "only.ovf").write_bytes(ovf_bytes)
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as archive:
        archive.add(work / "only.ovf", arcname="missing.ovf")
    _refused(home, "no-disk", ova, "is not in it")


def test_a_backing_file_qcow2_is_refused_with_nothing_left(home: Path, work: Path) -> None:
    base = _made(_raw(work / "base.raw"), "qcow2", work / "base.qcow2")
    overlay = work / "overlay.qcow2"
    done = _img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    assert done.returncode == 0, done.stderr
    _refused(home, "overlay", overlay, "backing file")


def test_a_corrupt_qcow2_is_refused_with_nothing_left(home: Path, work: Path) -> None:
    corrupt = _made(_raw(work / "c.raw"), "qcow2", work / "corrupt.qcow2")
    with corrupt.open("r+b") as file:  # the L1 table's offset points past the file's end
        file.seek(40)
        file.write((1 << 40).to_bytes(8, "big"))
    _refused(home, "corrupt", corrupt, "corrupt.qcow2", "it is corrupt")
