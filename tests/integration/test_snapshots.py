"""Disk snapshots with real QEMU and the reference guest: revert brings a file back, a
middle snapshot deleted while the guest runs keeps both neighbours' data, a failed switch
leaves nothing behind, and the CLI draws the tree."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from corral.compute import lifecycle, snapshots
from corral.compute.context import Corral
from corral.errors import MonitorError, StateError
from corral.qemu import monitor, vmstate
from tests.integration.conftest import GuestShell, cli


def _files(ctx: Corral, vm: str) -> set[str]:
    return {p.name for p in ctx.home.vm_dir(vm).glob("*.qcow2")}


def _check_clean(ctx: Corral, vm: str) -> None:
    for path in ctx.home.vm_dir(vm).glob("*.qcow2"):
        done = subprocess.run(
            ["qemu-img", "check", "--output=json", "-f", "qcow2", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, (path, done.stdout, done.stderr)
        assert json.loads(done.stdout).get("corruptions", 0) == 0


def _write(shell: GuestShell, name: str) -> str:
    """A file of random data in the guest, synced; its checksum."""
    shell.run(f"dd if=/dev/urandom of=/root/{name} bs=64k count=4 2>/dev/null; sync")
    return shell.run(f"md5sum /root/{name}").split()[0]


def _sum(shell: GuestShell, name: str) -> str:
    return shell.run(f"md5sum /root/{name} 2>&1").split()[0]


def test_revert_brings_a_deleted_file_back(ctx: Corral, vm: str, shell: GuestShell) -> None:
    lifecycle.start(ctx, vm, wait=True)
    kept = _write(shell, "kept")
    view = snapshots.create_snapshot(ctx, vm, "before-rm", "a file is there")
    assert (view.current, view.vm_state, view.parent) == (True, "running", None)
    shell.run("rm /root/kept; sync")
    assert "No such file" in shell.run("ls /root/kept 2>&1")
    with pytest.raises(StateError, match="stop it first"):
        snapshots.revert_snapshot(ctx, vm, "before-rm")
    lifecycle.stop(ctx, vm)
    preview = snapshots.preview_revert(ctx, vm, "before-rm").lines
    assert preview[0].startswith(f"LOST: what vm '{vm}' wrote since snapshot 'before-rm'")
    snapshots.revert_snapshot(ctx, vm, "before-rm")
    lifecycle.start(ctx, vm, wait=True)
    assert _sum(shell, "kept") == kept
    lifecycle.destroy(ctx, vm)
    _check_clean(ctx, vm)


def test_deleting_a_middle_snapshot_while_running_keeps_both_neighbours(
    ctx: Corral, vm: str, shell: GuestShell
) -> None:
    lifecycle.start(ctx, vm, wait=True)
    sums = {"a": _write(shell, "a")}
    snapshots.create_snapshot(ctx, vm, "s1")
    sums["b"] = _write(shell, "b")
    snapshots.create_snapshot(ctx, vm, "s2")
    sums["c"] = _write(shell, "c")
    snapshots.create_snapshot(ctx, vm, "s3")
    before = _files(ctx, vm)
    steps = snapshots.preview_delete(ctx, vm, "s2").lines
    assert steps[0] == f"snapshot 's2' is merged into s3 of vm '{vm}'"
    assert "by QEMU while the VM runs" in steps[1]
    snapshots.delete_snapshot(ctx, vm, "s2")
    # The guest goes on reading every file through the merged chain.
    assert {n: _sum(shell, n) for n in sums} == sums
    tree = {s.name: s.parent for s in snapshots.list_snapshots(ctx, vm)}
    assert tree == {"s1": None, "s3": "s1"}
    assert len(_files(ctx, vm)) == len(before) - 1
    lifecycle.stop(ctx, vm)
    _check_clean(ctx, vm)
    # The neighbours: s3 has a, b and c; s1 has a only.
    snapshots.revert_snapshot(ctx, vm, "s3")
    lifecycle.start(ctx, vm, wait=True)
    assert {n: _sum(shell, n) for n in sums} == sums
    lifecycle.stop(ctx, vm)
    snapshots.revert_snapshot(ctx, vm, "s1")
    lifecycle.start(ctx, vm, wait=True)
    assert _sum(shell, "a") == sums["a"]
    assert "No such file" in shell.run("ls /root/b 2>&1")
    lifecycle.destroy(ctx, vm)
    _check_clean(ctx, vm)


def test_a_failed_switch_leaves_no_overlay_and_no_record(
    ctx: Corral, vm: str, shell: GuestShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    lifecycle.start(ctx, vm, wait=True)
    before = _files(ctx, vm)
    real = monitor.Monitor.transaction

    def failing(self: monitor.Monitor, actions: list[dict[str, object]]) -> None:
        # One more action on a node that does not exist: QEMU refuses the whole transaction.
        real(self, [*actions, monitor.snapshot_action("no-such-node", "no-such-overlay")])

    monkeypatch.setattr(monitor.Monitor, "transaction", failing)
    with pytest.raises(MonitorError, match="transaction"):
        snapshots.create_snapshot(ctx, vm, "doomed")
    monkeypatch.undo()
    assert _files(ctx, vm) == before
    assert snapshots.list_snapshots(ctx, vm) == []
    with monitor.Monitor(str(ctx.home.vm_dir(vm) / "qmp.sock")) as mon:
        open_files = {n["file"] for n in mon.query_named_block_nodes()}
    assert not any("-" in Path(f).name and f.endswith(".qcow2") for f in open_files), open_files
    # The guest still writes where it did, and a snapshot can be taken afterwards.
    _write(shell, "after")
    assert snapshots.create_snapshot(ctx, vm, "fine").current


def test_cli_draws_the_tree_and_previews(ctx: Corral, vm: str) -> None:
    home = ctx.home.root
    assert cli(home, "snapshot", "create", vm, "s1").returncode == 0
    assert cli(home, "snapshot", "create", vm, "s2", "--description", "second").returncode == 0
    done = cli(home, "snapshot", "list", vm)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("s1  (")
    assert lines[1].startswith("  s2 *  (") and lines[1].endswith("- second")
    assert lines[2] == "    (now)"
    listed = json.loads(cli(home, "snapshot", "list", vm, "--json").stdout)
    assert [(s["name"], s["parent"]) for s in listed] == [("s1", None), ("s2", "s1")]
    dry = cli(home, "snapshot", "revert", vm, "s1", "--dry-run")
    assert dry.returncode == 0 and "nothing is lost" in dry.stdout
    files = _files(ctx, vm)
    dry = cli(home, "snapshot", "delete", vm, "s1", "--dry-run")
    assert "snapshot 's1' is merged into s2" in dry.stdout and "with qemu-img" in dry.stdout
    assert _files(ctx, vm) == files
    assert cli(home, "snapshot", "delete", vm, "s1").returncode == 0
    listed = json.loads(cli(home, "snapshot", "list", vm, "--json").stdout)
    assert [(s["name"], s["parent"]) for s in listed] == [("s2", None)]
    _check_clean(ctx, vm)
    bad = cli(home, "snapshot", "create", vm, "Bad Name")
    assert bad.returncode != 0 and "name" in bad.stderr


# -- snapshots with memory ----------------------------------------------------------------------

#: Counts in /tmp/c, five times a second; each value is written whole (a rename), so a read
#: never finds the file truncated and empty.
_COUNTER = (
    "( i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; sleep 0.2; "
    "done ) & :"
)


def _count(shell: GuestShell) -> int:
    return int(shell.run("cat /tmp/c").strip())


def _count_reaches(shell: GuestShell, value: int, timeout: float = 60.0) -> int:
    """The guest's counter once it is at least ``value`` (each look is a round trip to the
    guest's shell, within a deadline)."""
    deadline = time.monotonic() + timeout
    while (seen := _count(shell)) < value:
        assert time.monotonic() < deadline, f"the counter stayed at {seen} (< {value})"
    return seen


def _qmp_status(ctx: Corral, vm: str) -> str:
    with monitor.Monitor(str(ctx.home.vm_dir(vm) / "qmp.sock")) as mon:
        return mon.query_status()


def test_a_memory_snapshot_resumes_the_guest_where_it_was(
    ctx: Corral, vm: str, shell: GuestShell
) -> None:
    lifecycle.start(ctx, vm, wait=True)
    shell.run(_COUNTER)
    before = _count_reaches(shell, 3)
    view = snapshots.create_snapshot(ctx, vm, "full", "counter running", memory=True)
    after = _count(shell)
    assert (view.kind, view.vm_state, view.current) == ("memory", "running", True)
    assert view.memory_file is not None
    state_file = ctx.home.vm_dir(vm) / view.memory_file
    assert state_file.stat().st_size > 0
    assert _qmp_status(ctx, vm) == "running"
    later = _count_reaches(shell, after + 20)
    preview = snapshots.preview_revert(ctx, vm, "full").lines
    assert preview[0].startswith(f"vm '{vm}' runs: it is destroyed first")
    assert any("the guest is running again where it was" in line for line in preview)
    snapshots.revert_snapshot(ctx, vm, "full")
    assert snapshots.get_snapshot(ctx, vm, "full").current
    assert _qmp_status(ctx, vm) == "running"
    # The same process goes on counting from the snapshot's value, not from later's.
    first = _count(shell)
    assert before <= first <= after + 10 < later, (before, first, after, later)
    assert _count_reaches(shell, first + 3) > first
    # From a stopped VM too: the guest comes back running.
    lifecycle.destroy(ctx, vm)
    snapshots.revert_snapshot(ctx, vm, "full")
    assert _qmp_status(ctx, vm) == "running"
    assert before <= _count(shell) <= after + 10
    # Deleting it merges its layers and removes its saved state.
    snapshots.delete_snapshot(ctx, vm, "full")
    assert not state_file.exists()
    assert list(ctx.home.vm_dir(vm).glob("*.state")) == []
    lifecycle.destroy(ctx, vm)
    _check_clean(ctx, vm)


def test_a_failed_save_leaves_no_snapshot_and_no_file(
    ctx: Corral, vm: str, shell: GuestShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StateError, match="start it first"):
        snapshots.create_snapshot(ctx, vm, "early", memory=True)
    lifecycle.start(ctx, vm, wait=True)
    before = _files(ctx, vm)
    real = monitor.Monitor.migrate

    def failing(self: monitor.Monitor, uri: str) -> None:
        # A descriptor QEMU was never given: it refuses the migration.
        real(self, uri.replace("corral-save", "no-such-fd"))

    monkeypatch.setattr(vmstate.Monitor, "migrate", failing)
    with pytest.raises(MonitorError, match="migrate"):
        snapshots.create_snapshot(ctx, vm, "doomed", memory=True)
    monkeypatch.undo()
    assert _files(ctx, vm) == before
    assert list(ctx.home.vm_dir(vm).glob("*.state")) == []
    assert snapshots.list_snapshots(ctx, vm) == []
    assert _qmp_status(ctx, vm) == "running"
    _write(shell, "after")


def test_cli_takes_and_reverts_a_memory_snapshot_of_a_paused_vm(
    ctx: Corral, vm: str, shell: GuestShell
) -> None:
    home = ctx.home.root
    lifecycle.start(ctx, vm, wait=True)
    shell.run(_COUNTER)
    _count_reaches(shell, 2)
    lifecycle.pause(ctx, vm)
    done = cli(home, "snapshot", "create", vm, "p1", "--memory")
    assert done.returncode == 0, done.stderr
    assert "with memory" in done.stdout
    assert cli(home, "snapshot", "list", vm).stdout.startswith("p1 *  (")
    assert ", paused, memory)" in cli(home, "snapshot", "list", vm).stdout
    lifecycle.resume(ctx, vm)
    _count_reaches(shell, _count(shell) + 5)
    assert cli(home, "snapshot", "revert", vm, "p1").returncode == 0
    # It was paused when taken: it is paused again, and runs on when resumed.
    assert _qmp_status(ctx, vm) == "paused"
    lifecycle.resume(ctx, vm)
    first = _count(shell)
    assert _count_reaches(shell, first + 2) > first
