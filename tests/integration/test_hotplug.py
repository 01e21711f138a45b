"""Volumes hot-plugged into the running reference guest, and attached to stopped VMs.

The guest tells volumes apart by their serial number (``/sys/block/vd*/serial``), which is
the volume's device id; sizes are read from ``/sys/block/<disk>/size`` (512-byte sectors).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from corral.access.local import local_principal
from corral.access.principal import Principal
from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create, delete
from corral.compute.volume_attach import attach_volume, detach_volume, resize_volume
from corral.compute.volumes import create_volume, delete_volume, find_volume
from corral.errors import CorralError, GuestTimeout, InUse
from corral.qemu.monitor import Monitor
from corral.qemu.volume_nodes import device_id
from tests.integration.conftest import GuestShell, cli

PATTERN = "corral-hotplug-pattern-7f3a"


@pytest.fixture
def admin(ctx: Corral) -> Principal:
    return local_principal(ctx, os.getuid())


@pytest.fixture
def volume(ctx: Corral, admin: Principal) -> Iterator[str]:
    name = f"hp-{uuid.uuid4().hex[:8]}"
    create_volume(ctx, admin, name, "16M")
    yield name
    try:
        if find_volume_attached(ctx, admin, name):
            detach_volume(ctx, admin, name)
        delete_volume(ctx, admin, name)
    except CorralError:
        pass


@pytest.fixture
def second_vm(ctx: Corral) -> Iterator[str]:
    name = f"t2-{uuid.uuid4().hex[:8]}"
    create(ctx, CreateRequest(name=name, image="reference", memory="256M"))
    yield name
    with contextlib.suppress(CorralError):
        lifecycle.destroy(ctx, name)
    with contextlib.suppress(CorralError):
        delete(ctx, name)


def find_volume_attached(ctx: Corral, admin: Principal, name: str) -> bool:
    with ctx.db.session() as session:
        return find_volume(session, admin, name).attached_to is not None


def dev_of(ctx: Corral, admin: Principal, name: str) -> str:
    with ctx.db.session() as session:
        return device_id(find_volume(session, admin, name).id)


def guest_disk(shell: GuestShell, serial: str, present: bool = True, timeout: float = 30) -> str:
    """The guest's disk whose serial is ``serial`` once it appears (or ``""`` once gone)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = shell.run("for d in /sys/block/vd*; do echo ${d##*/}=$(cat $d/serial); done")
        found = [ln.split("=")[0] for ln in listing.splitlines() if ln.endswith(f"={serial}")]
        if bool(found) == present:
            return found[0] if found else ""
        assert time.monotonic() < deadline, f"disk {serial} present={not present}: {listing}"


def sectors(shell: GuestShell, disk: str) -> int:
    return int(shell.run(f"cat /sys/block/{disk}/size").strip())


def test_hotplug_write_unplug_and_read_on_another_vm(
    ctx: Corral, admin: Principal, vm: str, second_vm: str, volume: str, shell: GuestShell
) -> None:
    lifecycle.start(ctx, vm, wait=True)
    lifecycle.start(ctx, second_vm, wait=True)
    serial = dev_of(ctx, admin, volume)

    view = attach_volume(ctx, admin, volume, vm)
    assert view.attached_to == vm
    disk = guest_disk(shell, serial)
    assert sectors(shell, disk) == 16 * 2048
    shell.run(f"printf '{PATTERN}' > /dev/{disk}; sync")

    with pytest.raises(InUse, match=f"in use by vm {vm}"):
        attach_volume(ctx, admin, volume, second_vm)

    assert detach_volume(ctx, admin, volume).attached_to is None
    assert guest_disk(shell, serial, present=False) == ""

    other = GuestShell(ctx, second_vm)
    attach_volume(ctx, admin, volume, second_vm)
    disk2 = guest_disk(other, serial)
    assert other.run(f"head -c {len(PATTERN)} /dev/{disk2}; echo") == PATTERN

    grown = resize_volume(ctx, admin, volume, "32M")
    assert grown.size == 32 * 1024 * 1024
    deadline = time.monotonic() + 30
    while sectors(other, disk2) != 32 * 2048:
        assert time.monotonic() < deadline, "the guest never saw the new size"


def test_unacknowledged_unplug_times_out_and_stays_attached(
    ctx: Corral, admin: Principal, vm: str, volume: str, shell: GuestShell
) -> None:
    lifecycle.start(ctx, vm, wait=True)
    serial = dev_of(ctx, admin, volume)
    attach_volume(ctx, admin, volume, vm)
    guest_disk(shell, serial)
    lifecycle.pause(ctx, vm)  # a guest whose vCPUs are stopped answers no unplug request
    with pytest.raises(GuestTimeout, match="release of volume device"):
        detach_volume(ctx, admin, volume, timeout=1)
    assert find_volume_attached(ctx, admin, volume)
    with Monitor(str(ctx.home.vm_dir(vm) / "qmp.sock")) as mon:
        assert mon.qom_exists(f"/machine/peripheral/{serial}")
    # Once the guest runs again, a detach completes (whether it already released it or not).
    lifecycle.resume(ctx, vm)
    assert detach_volume(ctx, admin, volume, timeout=30).attached_to is None
    assert guest_disk(shell, serial, present=False) == ""
    with Monitor(str(ctx.home.vm_dir(vm) / "qmp.sock")) as mon:
        nodes = {n["node-name"] for n in mon.query_named_block_nodes()}
    assert not {n for n in nodes if n.startswith(serial)}


def test_cold_attach_appears_at_start_and_blocks_delete(
    ctx: Corral, admin: Principal, vm: str, volume: str, shell: GuestShell
) -> None:
    home = ctx.home.root
    done = cli(home, "volume", "attach", volume, vm)
    assert done.returncode == 0, done.stderr
    assert f"attached to vm {vm}" in done.stdout
    done = cli(home, "volume", "resize", volume, "8M")
    assert done.returncode != 0 and "only grows" in done.stderr
    done = cli(home, "volume", "resize", volume, "24M")
    assert done.returncode == 0, done.stderr

    lifecycle.start(ctx, vm, wait=True)
    disk = guest_disk(shell, dev_of(ctx, admin, volume))
    assert sectors(shell, disk) == 24 * 2048
    lifecycle.destroy(ctx, vm)
    with pytest.raises(InUse, match=f"in use by volume {volume}"):
        delete(ctx, vm)
    done = cli(home, "volume", "detach", volume)
    assert done.returncode == 0, done.stderr
    assert not find_volume_attached(ctx, admin, volume)
