"""USB devices with the reference guest: the guest sees a tablet added with ``corral usb``
(QEMU's vendor id 0627), no longer sees it once removed, and keeps it across destroy and
start; a VM that started without USB devices has no controller and refuses a hotplug; a
volume plugged in live as USB mass storage is a SCSI disk the guest writes and reads, gone
once removed; a host device on the allow-list is passed through (QEMU waits for a device
that is not plugged in), one off it is refused."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.access.local import local_principal
from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.settings import SETTINGS_FILE
from corral.compute.volumes import create_volume, delete_volume, find_volume
from corral.qemu.monitor import Monitor
from corral.storage.volumes import volume_path
from tests.integration.conftest import GuestShell, cli

#: What the guest lists: each USB device's vendor id and product name.
_LIST = "for d in /sys/bus/usb/devices/*; do cat $d/idVendor $d/product 2>/dev/null; done"


def _usb_seen(shell: GuestShell, present: bool, deadline: float = 60.0) -> str:
    """The guest's USB listing once the tablet is ``present`` (or gone) in it; the USB
    modules load after the guest is ready, so the listing is read again until then."""
    end = time.monotonic() + deadline
    while True:
        listing = shell.run(_LIST)
        if ("QEMU USB Tablet" in listing) == present:
            return listing
        assert time.monotonic() < end, f"tablet present={not present} after {deadline} s"


def _ids(home: Path, vm: str) -> list[str]:
    done = cli(home, "usb", "list", vm, "--json")
    assert done.returncode == 0, done.stderr
    return [d["id"] for d in json.loads(done.stdout)]


def test_tablet_add_remove_restart(ctx: Corral, corral_home: Path, vm: str) -> None:
    added = cli(corral_home, "usb", "add", vm, "usb-tablet")
    assert added.returncode == 0, added.stderr
    (tablet,) = _ids(corral_home, vm)
    assert tablet.startswith("usb-tablet-") and tablet in added.stdout

    lifecycle.start(ctx, vm, wait=True)
    shell = GuestShell(ctx, vm)
    listing = _usb_seen(shell, present=True)
    assert "0627" in listing  # QEMU's vendor id

    removed = cli(corral_home, "usb", "remove", vm, tablet)
    assert removed.returncode == 0, removed.stderr
    assert _ids(corral_home, vm) == []
    _usb_seen(shell, present=False)

    # The controller stays while QEMU runs: a hotplug now works, and survives a restart.
    again = cli(corral_home, "usb", "add", vm, "usb-tablet")
    assert again.returncode == 0, again.stderr
    _usb_seen(shell, present=True)
    (second,) = _ids(corral_home, vm)
    assert second != tablet
    lifecycle.destroy(ctx, vm)
    lifecycle.start(ctx, vm, wait=True)
    _usb_seen(GuestShell(ctx, vm), present=True)
    assert _ids(corral_home, vm) == [second]


def test_running_vm_without_controller_refuses(ctx: Corral, corral_home: Path, vm: str) -> None:
    lifecycle.start(ctx, vm, wait=True)
    refused = cli(corral_home, "usb", "add", vm, "usb-kbd")
    assert refused.returncode != 0
    assert "stop it first" in refused.stderr + refused.stdout
    assert _ids(corral_home, vm) == []
    host = cli(corral_home, "usb", "add", vm, "usb-host")
    assert host.returncode != 0 and "vendor:product" in host.stderr + host.stdout


# -- a volume as USB mass storage, live ---------------------------------------------------------

#: What the guest lists: its SCSI disks (USB mass storage is one).
_DISKS = "ls /sys/block | grep '^sd' || true"
PATTERN = "corral-usb-storage-5e1d"


def _disks(shell: GuestShell, present: bool, deadline: float = 60.0) -> list[str]:
    """The guest's SCSI disks once there is one (``present``) or none; the USB and SCSI
    modules load after the guest is ready, and a disk appears once the guest has probed it."""
    end = time.monotonic() + deadline
    while True:
        disks = shell.run(_DISKS).split()
        if bool(disks) == present:
            return disks
        assert time.monotonic() < end, f"SCSI disks present={not present} after {deadline} s"


@pytest.fixture
def stick(ctx: Corral) -> Iterator[str]:
    """A raw 16M volume, deleted afterwards."""
    admin = local_principal(ctx, os.getuid())
    name = f"usb-{uuid.uuid4().hex[:8]}"
    create_volume(ctx, admin, name, "16M", "raw")
    yield name
    delete_volume(ctx, admin, name)


def test_storage_live_write_read_remove(
    ctx: Corral, corral_home: Path, vm: str, stick: str
) -> None:
    assert cli(corral_home, "usb", "add", vm, "usb-tablet").returncode == 0  # the controller
    lifecycle.start(ctx, vm, wait=True)
    shell = GuestShell(ctx, vm)
    assert _disks(shell, present=False, deadline=5.0) == []

    added = cli(corral_home, "usb", "add", vm, "usb-storage", "--volume", stick)
    assert added.returncode == 0, added.stderr
    (disk,) = _disks(shell, present=True)
    size = int(shell.run(f"cat /sys/block/{disk}/size"))
    assert size * 512 == 16 * 1024 * 1024
    shell.run(f"echo {PATTERN} | dd of=/dev/{disk} conv=fsync 2>/dev/null")
    shell.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    assert PATTERN in shell.run(f"dd if=/dev/{disk} bs=512 count=1 2>/dev/null | head -n 1")

    (storage,) = [d for d in _ids(corral_home, vm) if d.startswith("vol-")]
    removed = cli(corral_home, "usb", "remove", vm, storage)
    assert removed.returncode == 0, removed.stderr
    assert _disks(shell, present=False) == []
    # What the guest wrote is in the volume's file, which QEMU has let go of.
    admin = local_principal(ctx, os.getuid())
    with ctx.db.session() as session:
        row = find_volume(session, admin, stick)
        assert row.attached_to is None
        path = volume_path(ctx.home.root, row.id, "raw")
    assert path.read_bytes()[: len(PATTERN)] == PATTERN.encode()
    lifecycle.destroy(ctx, vm)


# -- host devices --------------------------------------------------------------------------------


@pytest.fixture
def allow_list(corral_home: Path) -> Iterator[Path]:
    """corral.toml allowing two host devices (none of them plugged into this host)."""
    path = corral_home / SETTINGS_FILE
    assert not path.exists()
    path.write_text('[usb]\nhost_allow = ["046d:c52b", "0781:5583"]\n')
    yield path
    path.unlink()


def test_host_devices_pass_through_where_allowed(
    ctx: Corral, corral_home: Path, vm: str, allow_list: Path
) -> None:
    refused = cli(corral_home, "usb", "add", vm, "usb-host", "--host", "1234:5678")
    assert refused.returncode != 0
    assert "host_allow" in refused.stderr + refused.stdout and str(allow_list) in refused.stderr

    first = cli(corral_home, "usb", "add", vm, "usb-host", "--host", "046d:c52b")
    assert first.returncode == 0, first.stderr
    (stopped_id,) = _ids(corral_home, vm)
    lifecycle.start(ctx, vm, wait=True)
    qmp = str(ctx.home.vm_dir(vm) / "qmp.sock")
    with Monitor(qmp) as mon:
        assert mon.qom_exists(f"/machine/peripheral/{stopped_id}")
    # Hotplug: QEMU takes a device that is not plugged in, and waits for it.
    second = cli(corral_home, "usb", "add", vm, "usb-host", "--host", "0781:5583")
    assert second.returncode == 0, second.stderr
    (live_id,) = [d for d in _ids(corral_home, vm) if d != stopped_id]
    with Monitor(qmp) as mon:
        assert mon.qom_exists(f"/machine/peripheral/{live_id}")
        info = mon.human_monitor_command("info usb")
    assert f"ID: {stopped_id}" in info and f"ID: {live_id}" in info
    assert "USB Host Device" in info

    listed = cli(corral_home, "usb", "list", vm)
    assert "0781:5583" in listed.stdout and "046d:c52b" in listed.stdout
    host_list = cli(corral_home, "usb", "host-list", "--json")
    assert host_list.returncode == 0, host_list.stderr
    assert isinstance(json.loads(host_list.stdout), list)

    removed = cli(corral_home, "usb", "remove", vm, live_id)
    assert removed.returncode == 0, removed.stderr
    with Monitor(qmp) as mon:
        assert not mon.qom_exists(f"/machine/peripheral/{live_id}")
        assert mon.qom_exists(f"/machine/peripheral/{stopped_id}")
    lifecycle.destroy(ctx, vm)
    # Off the allow-list, the device stops the VM from starting, naming the setting.
    allow_list.write_text('[usb]\nhost_allow = ["0781:5583"]\n')
    started = cli(corral_home, "start", vm)
    assert started.returncode != 0 and "host_allow" in started.stderr + started.stdout
