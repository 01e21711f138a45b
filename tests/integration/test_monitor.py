"""``corral monitor`` and ``corral cdrom`` with the reference guest: QMP and HMP through the real
command, and an ISO the guest reads, ejected, swapped live and kept across a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.compute import lifecycle
from corral.compute.context import Corral
from tests.api.test_monitor import make_iso
from tests.integration.conftest import GuestShell, cli

pytestmark = pytest.mark.tcg

#: Waits (up to 10 s) for the CD-ROM drive, whose drivers rcS loads after corral-ready.
_DRIVE = (
    "mkdir -p /mnt/cd; for i in $(seq 100); do [ -e /sys/block/sr0 ] && break; sleep 0.1; done; "
    "[ -e /dev/sr0 ] || mknod /dev/sr0 b 11 0; ls /sys/block"
)


#: Prints the file on the medium, or nothing. The first read after a medium change fails (the
#: drive reports the change as a unit attention) and makes the guest look again: try a few times.
_READ = (
    "for i in 1 2 3 4 5; do mount -t iso9660 -o ro /dev/sr0 /mnt/cd 2>/dev/null && break; done; "
    "cat /mnt/cd/* 2>/dev/null; umount /mnt/cd 2>/dev/null; true"
)


def test_monitor_commands_through_the_cli(ctx: Corral, vm: str) -> None:
    home = ctx.home.root
    lifecycle.start(ctx, vm, wait=True)
    status = cli(home, "monitor", vm, "--qmp", '{"execute": "query-status"}')
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "running"
    stopped = cli(home, "monitor", vm, "--qmp", "stop")
    assert stopped.returncode == 0, stopped.stderr
    info = cli(home, "monitor", vm, "--hmp", "info status")
    assert info.returncode == 0, info.stderr
    assert info.stdout.strip() == "VM status: paused"
    assert cli(home, "monitor", vm, "--qmp", "cont").returncode == 0
    assert cli(home, "monitor", vm, "--hmp", "info status").stdout.strip() == "VM status: running"
    unknown = cli(home, "monitor", vm, "--qmp", "no-such-command")
    assert unknown.returncode == 1 and "CommandNotFound" in unknown.stderr
    prompt = cli(home, "monitor", vm)  # standard input is /dev/null, not a terminal
    assert prompt.returncode != 0 and "not a terminal" in prompt.stderr


def test_cdrom_insert_eject_and_restart(ctx: Corral, vm: str, tmp_path: Path) -> None:
    home = ctx.home.root
    first = make_iso(tmp_path / "first.iso", "first medium\n")
    second = make_iso(tmp_path / "second.iso", "second medium\n")
    inserted = cli(home, "cdrom", "insert", vm, str(first))
    assert inserted.returncode == 0, inserted.stderr
    lifecycle.start(ctx, vm, wait=True)
    shell = GuestShell(ctx, vm)
    assert "sr0" in shell.run(_DRIVE, timeout=60).split()
    assert "first medium" in shell.run(_READ)
    size = int(shell.run("cat /sys/block/sr0/size"))
    assert size > 0

    ejected = cli(home, "cdrom", "eject", vm)
    assert ejected.returncode == 0, ejected.stderr
    assert "first medium" not in shell.run(_READ)
    block = cli(home, "monitor", vm, "--qmp", "query-block")
    tray = next(b for b in json.loads(block.stdout) if b.get("qdev") == "cdrom0")
    assert "inserted" not in tray

    assert cli(home, "cdrom", "insert", vm, str(second)).returncode == 0
    assert "second medium" in shell.run(_READ)

    lifecycle.destroy(ctx, vm)
    lifecycle.start(ctx, vm, wait=True)
    assert "sr0" in shell.run(_DRIVE, timeout=60).split()
    assert "second medium" in shell.run(_READ)
