"""USB devices with the reference guest: the guest sees a tablet added with ``corral usb``
(QEMU's vendor id 0627), no longer sees it once removed, and keeps it across destroy and
start; a VM that started without USB devices has no controller and refuses a hotplug."""

from __future__ import annotations

import json
import time
from pathlib import Path

from corral.compute import lifecycle
from corral.compute.context import Corral
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
    assert host.returncode != 0 and "not supported" in host.stderr + host.stdout
