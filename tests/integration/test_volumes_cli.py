"""``corral volume``: the real command, a client of its state directory's daemon (started by
the first verb), with the volumes' files checked by qemu-img."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.config import Home
from corral.storage.volumes import volume_path
from corral.store.models import VolumeRow
from corral.units import MiB
from tests import daemons
from tests.integration.conftest import cli


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A fresh state directory (short path: the daemon's socket lives in it)."""
    root = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))
    yield root
    daemons.stop(root)
    shutil.rmtree(root, ignore_errors=True)


def _file(home: Path, name: str) -> Path:
    ctx = Corral(Home(home))
    try:
        with ctx.db.session() as session:
            row = session.scalars(select(VolumeRow).where(VolumeRow.name == name)).one()
        return volume_path(home, row.id, "raw" if row.format == "raw" else "qcow2")
    finally:
        ctx.close()


def _listed(home: Path, *args: str) -> list[dict[str, Any]]:
    done = cli(home, "volume", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    items: list[dict[str, Any]] = json.loads(done.stdout)
    return items


def test_create_list_info_delete(home: Path) -> None:
    made = cli(home, "volume", "create", "data", "--size", "64M", "--description", "scratch")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "volume data created in project default (qcow2, 64 MiB)"
    raw = cli(home, "volume", "create", "blob", "--size", "16M", "--format", "raw")
    assert raw.returncode == 0, raw.stderr

    path = _file(home, "data")
    check = subprocess.run(
        ["qemu-img", "check", "-f", "qcow2", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(check.stdout).get("corruptions", 0) == 0
    info = subprocess.run(
        ["qemu-img", "info", "-f", "qcow2", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)["virtual-size"] == 64 * MiB
    assert _file(home, "blob").stat().st_size == 16 * MiB

    listed = _listed(home)
    assert [(v["name"], v["kind"], v["format"], v["size"]) for v in listed] == [
        ("blob", "volume", "raw", 16 * MiB),
        ("data", "volume", "qcow2", 64 * MiB),
    ]
    table = cli(home, "volume", "list")
    assert table.returncode == 0, table.stderr
    header, rule, *rows = [line for line in table.stdout.splitlines() if line.strip()]
    assert header.split() == [
        *("Name", "Project", "Kind", "Format", "Size", "Used", "Attached", "to", "Created")
    ]
    assert set(rule.strip()) == {"─"}
    assert [row.split()[:6] for row in rows] == [
        ["blob", "default", "volume", "raw", "16", "MiB"],
        ["data", "default", "volume", "qcow2", "64", "MiB"],
    ]

    shown = cli(home, "volume", "info", "data")
    assert shown.returncode == 0, shown.stderr
    assert "Description: scratch" in shown.stdout and "Size:        64 MiB" in shown.stdout
    as_json = json.loads(cli(home, "volume", "info", "data", "--json").stdout)
    assert as_json["attached_to"] is None and as_json["project"] == "default"

    renamed = cli(home, "volume", "update", "blob", "--rename", "blob2")
    assert renamed.returncode == 0 and renamed.stdout.strip() == "volume blob2 updated"

    gone = cli(home, "volume", "delete", "data")
    assert gone.returncode == 0 and gone.stdout.strip() == "volume data deleted"
    assert not path.exists()
    missing = cli(home, "volume", "info", "data")
    assert missing.returncode == 2
    assert "volume 'data' not found" in missing.stderr


def test_refusals_exit_with_their_status(home: Path) -> None:
    cli(home, "volume", "create", "taken", "--size", "16M")
    again = cli(home, "volume", "create", "taken", "--size", "16M")
    assert again.returncode == 1 and "volume 'taken' already exists" in again.stderr
    bad = cli(home, "volume", "create", "odd", "--size", "lots")
    assert bad.returncode == 1 and "size" in bad.stderr
    fmt = cli(home, "volume", "create", "odd", "--size", "16M", "--format", "vmdk")
    assert fmt.returncode == 1 and "format" in fmt.stderr
    nowhere = cli(home, "volume", "create", "odd", "--size", "16M", "--project", "nope")
    assert nowhere.returncode == 2 and "project 'nope' not found" in nowhere.stderr
    assert "odd" not in [v["name"] for v in _listed(home)]


def test_vm_disks_are_listed_read_only(home: Path) -> None:
    ctx = Corral(Home(home))
    try:
        create(ctx, CreateRequest(name="web", disk_size="32M", memory="128M"))
    finally:
        ctx.close()
    disks = _listed(home, "--kind", "vm-disk")
    assert [(v["name"], v["attached_to"], v["size"]) for v in disks] == [
        ("web/root", "web", 32 * MiB)
    ]
    assert "web/root" in {v["name"] for v in _listed(home)}
    assert cli(home, "volume", "delete", "web/root").returncode != 0
