"""``corral create --cdrom`` and ``--boot``: the real command, a client of its state directory's
daemon, and the spec it records."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from corral.compute.context import Corral
from corral.config import Home
from corral.spec.vm import VmSpec
from corral.store.models import VmRow
from tests import daemons
from tests.api.test_monitor import make_iso
from tests.integration.conftest import cli


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A fresh state directory (short path: the daemon's socket lives in it)."""
    root = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    yield root
    daemons.stop(root)
    shutil.rmtree(root, ignore_errors=True)


def _spec(home: Path, name: str) -> VmSpec:
    ctx = Corral(Home(home))
    try:
        with ctx.db.session() as session:
            raw = session.scalars(select(VmRow.spec).where(VmRow.name == name)).one()
        return VmSpec.model_validate_json(raw)
    finally:
        ctx.close()


def test_create_with_an_iso_and_with_network_boot(home: Path, tmp_path: Path) -> None:
    iso = make_iso(tmp_path / "live.iso", "live")
    made = cli(home, "create", "live", "--cdrom", str(iso), "--memory", "128M")
    assert made.returncode == 0, made.stderr
    cdrom = _spec(home, "live").cdrom
    assert cdrom is not None and cdrom.path == str(iso) and cdrom.boot
    pxe = cli(home, "create", "pxe", "--disk-size", "64M", "--boot", "network")
    assert pxe.returncode == 0, pxe.stderr
    assert _spec(home, "pxe").nics[0].boot


def test_create_refuses_a_boot_it_cannot_do(home: Path) -> None:
    bad = cli(home, "create", "nocd", "--disk-size", "64M", "--boot", "cdrom")
    assert bad.returncode != 0
    assert "boot" in bad.stderr and "needs an ISO" in bad.stderr, bad.stderr
    odd = cli(home, "create", "odd", "--disk-size", "64M", "--boot", "floppy")
    assert odd.returncode != 0 and "boot" in odd.stderr, odd.stderr
