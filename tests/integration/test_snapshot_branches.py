"""Deleting a snapshot two layers are built on, with real QEMU and the reference guest: a
snapshot with a child on one branch and the running VM on another is deleted while the
guest runs; every remaining snapshot and the live state keep their data, every remaining
file checks clean and no longer names the deleted layer, which is gone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from corral.compute import lifecycle, snapshots
from corral.compute.context import Corral
from tests.integration.conftest import GuestShell


def _check_clean(path: Path) -> None:
    done = subprocess.run(
        ["qemu-img", "check", "--output=json", "-f", "qcow2", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, (path, done.stdout, done.stderr)
    assert json.loads(done.stdout).get("corruptions", 0) == 0, done.stdout


def _backing_chain(path: Path) -> list[str]:
    """The file names qemu-img opens from ``path`` as its headers say, top first."""
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "qcow2", "--backing-chain", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [Path(layer["filename"]).name for layer in json.loads(done.stdout)]


def _write(shell: GuestShell, name: str) -> str:
    shell.run(f"dd if=/dev/urandom of=/root/{name} bs=64k count=8 2>/dev/null; sync")
    return shell.run(f"md5sum /root/{name}").split()[0]


def _sums(shell: GuestShell, names: str) -> dict[str, str]:
    """Each file's checksum, or ``absent``."""
    found = {}
    for name in names:
        out = shell.run(f"md5sum /root/{name} 2>/dev/null || echo absent")
        found[name] = out.split()[0]
    return found


def test_deleting_a_snapshot_with_a_child_and_the_running_vm_on_it(
    ctx: Corral, vm: str, shell: GuestShell
) -> None:
    vm_dir = ctx.home.vm_dir(vm)
    lifecycle.start(ctx, vm, wait=True)
    sums = {"a": _write(shell, "a")}
    snapshots.create_snapshot(ctx, vm, "s1")
    sums["b"] = _write(shell, "b")
    snapshots.create_snapshot(ctx, vm, "s2")
    lifecycle.stop(ctx, vm)
    snapshots.revert_snapshot(ctx, vm, "s1")  # a second branch on s1: the VM's own
    lifecycle.start(ctx, vm, wait=True)
    sums["c"] = _write(shell, "c")
    assert _sums(shell, "abc") == {"a": sums["a"], "b": "absent", "c": sums["c"]}
    ((disk, layer),) = snapshots.get_snapshot(ctx, vm, "s1").layers.items()
    (s2_file,) = snapshots.get_snapshot(ctx, vm, "s2").layers.values()

    steps = snapshots.preview_delete(ctx, vm, "s1").lines
    assert steps[0] == f"snapshot 's1' is merged into s2 and the VM's current state of vm '{vm}'"
    assert f"{disk}: copy {layer} into {s2_file} (with qemu-img)" in steps[1]
    assert "(by QEMU while the VM runs)" in steps[2]
    assert "disk use grows by up to 1 copies" in steps[3]
    snapshots.delete_snapshot(ctx, vm, "s1")

    # The running guest reads the same through its merged chain.
    assert _sums(shell, "abc") == {"a": sums["a"], "b": "absent", "c": sums["c"]}
    assert [(s.name, s.parent) for s in snapshots.list_snapshots(ctx, vm)] == [("s2", None)]
    assert not (vm_dir / layer).exists()
    lifecycle.stop(ctx, vm)
    files = sorted(vm_dir.glob("*.qcow2"))
    for path in files:
        _check_clean(path)
        assert layer not in _backing_chain(path), path

    # The live state after a restart from the records, then the remaining snapshot's.
    lifecycle.start(ctx, vm, wait=True)
    assert _sums(shell, "abc") == {"a": sums["a"], "b": "absent", "c": sums["c"]}
    lifecycle.stop(ctx, vm)
    snapshots.revert_snapshot(ctx, vm, "s2")
    lifecycle.start(ctx, vm, wait=True)
    assert _sums(shell, "abc") == {"a": sums["a"], "b": sums["b"], "c": "absent"}
    lifecycle.destroy(ctx, vm)
    for path in vm_dir.glob("*.qcow2"):
        _check_clean(path)
