"""Clones with real QEMU and the reference guest: a file written in the source before cloning
is in the clone, later writes on either side stay on that side, and the source of a linked
clone cannot be deleted while the clone reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.compute import lifecycle
from corral.compute.clone import CloneRequest, clone
from corral.compute.context import Corral
from corral.compute.define import delete
from corral.compute.inventory import info
from corral.errors import InUse
from tests.integration.conftest import GuestShell, cli


def _write(shell: GuestShell, name: str) -> str:
    shell.run(f"dd if=/dev/urandom of=/root/{name} bs=64k count=4 2>/dev/null; sync")
    return shell.run(f"md5sum /root/{name}").split()[0]


def _sum(shell: GuestShell, name: str) -> str:
    return shell.run(f"md5sum /root/{name} 2>&1").split()[0]


@pytest.mark.parametrize("mode", ["linked", "full"])
def test_clone_holds_the_source_file_and_writes_stay_apart(
    ctx: Corral, corral_home: Path, vm: str, mode: str
) -> None:
    source, copy = GuestShell(ctx, vm), f"{vm}-c"
    lifecycle.start(ctx, vm, wait=True)
    before = _write(source, "before")
    lifecycle.stop(ctx, vm)
    if mode == "full":
        done = cli(corral_home, "clone", vm, copy, "--full")
        assert done.returncode == 0, done.stderr
    else:
        clone(ctx, CloneRequest(vm, copy, "linked"))
    try:
        target = GuestShell(ctx, copy)
        lifecycle.start(ctx, copy, wait=True)
        assert _sum(target, "before") == before
        _write(target, "in-clone")
        lifecycle.stop(ctx, copy)
        lifecycle.start(ctx, vm, wait=True)
        assert "No such file" in source.run("md5sum /root/in-clone 2>&1")
        _write(source, "in-source")
        lifecycle.stop(ctx, vm)
        lifecycle.start(ctx, copy, wait=True)
        assert "No such file" in target.run("md5sum /root/in-source 2>&1")
        assert _sum(target, "before") == before
        lifecycle.destroy(ctx, copy)
        if mode == "linked":
            with pytest.raises(InUse, match=f"linked clone vm '{copy}'"):
                delete(ctx, vm)
    finally:
        if info(ctx, copy).state in ("running", "paused", "starting", "stopping"):
            lifecycle.destroy(ctx, copy)
        delete(ctx, copy)
