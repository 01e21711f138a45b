"""The seed ISO, read by real tools: isoinfo (genisoimage), xorriso and blkid see the ``cidata``
label and exactly the NoCloud files, under their exact names, in every naming scheme."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from corral.cloudinit.render import SeedRequest, render_seed
from corral.cloudinit.seed import MAX_SEED_BYTES, build_seed, write_seed
from corral.errors import InvalidInput

from .conftest import ED25519, Tool

FILES = render_seed(
    SeedRequest(
        instance_id="i-0123456789abcdef",
        hostname="web1",
        authorized_keys=(ED25519,),
        user_data="#cloud-config\npackages: [curl]\nwrite_files:\n- path: /x\n  content: ü\n",
        nics=(("net0", "52:54:00:12:34:56"),),
    )
)
NAMES = ["meta-data", "network-config", "user-data"]


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    path = tmp_path / "seed.iso"
    write_seed(path, FILES)
    return path


def _listed(listing: str) -> list[str]:
    """File names of an ``isoinfo -l`` listing (without ``.`` and ``..``)."""
    names = [line.split("]", 1)[1].strip() for line in listing.splitlines() if "]" in line]
    return sorted(name for name in names if name not in (".", ".."))


def test_isoinfo_sees_the_cidata_volume_with_joliet_and_rock_ridge(
    isoinfo: Tool, seed: Path
) -> None:
    info = isoinfo("-d", "-i", seed)
    assert "Volume id: cidata\n" in info
    assert "Joliet with UCS level 3 found" in info
    assert "Rock Ridge signatures version 1 found" in info
    assert "Logical block size is: 2048" in info


@pytest.mark.parametrize("scheme", ["-R", "-J"])
def test_isoinfo_lists_the_three_files_by_their_names(
    isoinfo: Tool, seed: Path, scheme: str
) -> None:
    assert _listed(isoinfo(scheme, "-l", "-i", seed)) == NAMES
    for name in NAMES:
        assert isoinfo(scheme, "-i", seed, "-x", f"/{name}").encode() == FILES[name]


def test_isoinfo_plain_iso9660_names(isoinfo: Tool, seed: Path) -> None:
    assert _listed(isoinfo("-l", "-i", seed)) == [
        "META_DATA.;1",
        "NETWORK_CONFIG.;1",
        "USER_DATA.;1",
    ]


def test_joliet_volume_id_is_cidata_too(isoinfo: Tool, seed: Path) -> None:
    # blkid prefers the Joliet volume id when there is one.
    assert "Volume id: cidata\n" in isoinfo("-d", "-J", "-i", seed)


def test_rock_ridge_files_are_read_only_regular_files(isoinfo: Tool, seed: Path) -> None:
    for line in isoinfo("-R", "-l", "-i", seed).splitlines():
        if line.endswith(("meta-data ", "user-data ", "network-config ")):
            assert line.startswith("-r--r--r--"), line


def test_xorriso_lists_and_extracts_the_files(xorriso: Tool, seed: Path, tmp_path: Path) -> None:
    listing = xorriso("-indev", seed, "-ls", "/")
    assert sorted(line.strip("'") for line in listing.split()) == NAMES
    out = tmp_path / "out"
    xorriso("-osirrox", "on", "-indev", seed, "-extract", "/", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == FILES
    pvd = xorriso("-indev", seed, "-pvd_info")
    assert "Volume Id    : cidata\n" in pvd


def test_blkid_sees_iso9660_labelled_cidata(blkid: Tool, seed: Path) -> None:
    assert blkid("-p", "-o", "value", "-s", "LABEL", seed) == "cidata\n"
    fields = dict(line.split("=", 1) for line in blkid("-p", "-o", "export", seed).splitlines())
    assert fields["TYPE"] == "iso9660"
    assert fields["LABEL"] == "cidata"


def test_vendor_data_is_allowed(isoinfo: Tool, tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    write_seed(path, {**FILES, "vendor-data": b"#cloud-config\n"})
    assert _listed(isoinfo("-R", "-l", "-i", path)) == [*NAMES, "vendor-data"]


def test_empty_files_are_fine(isoinfo: Tool, tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    write_seed(path, {"meta-data": b"", "user-data": b""})
    assert _listed(isoinfo("-R", "-l", "-i", path)) == ["meta-data", "user-data"]


def test_same_files_same_bytes_whatever_the_clock_and_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_seed(FILES)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86_400 * 400 + 0.37)
    try:
        assert build_seed(FILES) == first
    finally:
        monkeypatch.undo()
        time.tzset()
    assert build_seed({**FILES, "user-data": b"#cloud-config\n"}) != first


def test_write_is_atomic_and_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    path.write_bytes(b"old")
    write_seed(path, FILES)
    assert path.read_bytes() == build_seed(FILES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["seed.iso"]


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    path.write_bytes(b"old")
    with pytest.raises(InvalidInput):
        write_seed(path, {"user-data": b""})
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["seed.iso"]


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"meta-data": b"", "user-data": b"", "userdata": b""}, "no file named userdata"),
        ({"meta-data": b"", "user-data": b"", "META-DATA": b""}, "no file named META-DATA"),
        ({"meta-data": b"", "user-data": b"", "../x": b""}, "no file named"),
        ({"user-data": b""}, "needs meta-data"),
        ({"network-config": b""}, "needs meta-data and user-data"),
        ({"meta-data": b"", "user-data": b"x" * MAX_SEED_BYTES + b"x"}, "at most"),
    ],
)
def test_refused_files(tmp_path: Path, files: dict[str, bytes], match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as err:
        write_seed(tmp_path / "seed.iso", files)
    assert err.value.field == "seed"
    assert not (tmp_path / "seed.iso").exists()
