"""Snapshot merges under faults, with real QEMU and the reference guest: QEMU killed with
SIGKILL while it merges a deleted snapshot's layer leaves every image clean, the VM's
records naming files that exist and open, a VM that boots with its data, and a delete that
can be run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.compute import lifecycle, records, snapshots
from corral.compute.context import Corral
from corral.errors import CorralError
from corral.qemu import monitor
from corral.qemu.monitor import Monitor
from tests.integration.conftest import GuestShell, cli

#: Data written into the layer that is merged, in MiB.
DATA_MIB = 64
#: QEMU's rate limit on the interrupted merge (bytes/s): the layer takes ~16 s to stream,
#: a window the test can always hit once the job is seen running.
THROTTLE = 4 * 2**20


def _check_clean(ctx: Corral, vm: str) -> list[Path]:
    files = sorted(ctx.home.vm_dir(vm).glob("*.qcow2"))
    for path in files:
        done = subprocess.run(
            ["qemu-img", "check", "--output=json", "-f", "qcow2", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, (path, done.stdout, done.stderr)
        assert json.loads(done.stdout).get("corruptions", 0) == 0, done.stdout
    return files


def _recorded_chain(ctx: Corral, vm: str) -> dict[str, list[str]]:
    with ctx.db.session() as session:
        row = records.load(ctx, session, vm).row
        assert row.disk_chain
        disks: dict[str, list[str]] = json.loads(row.disk_chain)["disks"]
        return disks


def _opens(path: Path) -> list[dict[str, Any]]:
    """The backing chain qemu-img opens from ``path``, top first."""
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "qcow2", "--backing-chain", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, (path, done.stderr)
    chain: list[dict[str, Any]] = json.loads(done.stdout)
    return chain


def _streaming(mon: Monitor, job: str, timeout: float = 120.0) -> dict[str, Any]:
    """Job ``job`` once QEMU reports it running with part of the layer copied."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs: list[dict[str, Any]] = mon.execute("query-block-jobs")
        seen = next((j for j in jobs if j.get("device") == job), None)
        if seen is not None and seen["status"] == "running" and 0 < seen["offset"] < seen["len"]:
            return seen
        time.sleep(0.05)  # polling QEMU's job state, within the deadline
    raise AssertionError(f"merge job {job} never ran within {timeout:.0f} s")


def test_killing_qemu_during_a_merge_leaves_clean_images_and_a_vm_that_starts(
    ctx: Corral, vm: str, shell: GuestShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, vm_dir = ctx.home.root, ctx.home.vm_dir(vm)
    lifecycle.start(ctx, vm, wait=True)
    snapshots.create_snapshot(ctx, vm, "s1")
    shell.run(
        f"dd if=/dev/urandom of=/root/big bs=1M count={DATA_MIB} 2>/dev/null; sync", timeout=300
    )
    want = shell.run("md5sum /root/big", timeout=120).split()[0]
    snapshots.create_snapshot(ctx, vm, "s2")
    ((disk, layer),) = snapshots.get_snapshot(ctx, vm, "s2").layers.items()
    assert (vm_dir / layer).stat().st_size > DATA_MIB * 2**20
    before = _recorded_chain(ctx, vm)

    running: list[dict[str, Any]] = []
    seen_running = threading.Event()

    def throttled(self: Monitor, job_id: str, node: str, base_node: str | None) -> None:
        # The merge's own monitor connection (QMP serves one client): the job as the real
        # call starts it, slowed from its first byte (set later, a fast job could be over
        # already), and say when QEMU reports it under way.
        args: dict[str, object] = {"job-id": job_id, "device": node, "speed": THROTTLE}
        if base_node is not None:
            args["base-node"] = base_node
        self.execute("block-stream", args)
        running.append(_streaming(self, job_id))
        seen_running.set()

    monkeypatch.setattr(monitor.Monitor, "block_stream", throttled)
    failure: list[BaseException] = []

    def delete() -> None:
        try:
            snapshots.delete_snapshot(ctx, vm, "s2")
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=delete, daemon=True)
    worker.start()
    assert seen_running.wait(timeout=180), failure
    job = running[0]
    assert job["device"] == f"corral-merge-{disk}"
    os.kill(int((vm_dir / "qemu.pid").read_text().strip()), signal.SIGKILL)
    # The delete notices QEMU is gone and fails at once, not at the merge's deadline.
    worker.join(timeout=60)
    assert not worker.is_alive(), "the delete still waits for a job of a dead QEMU"
    assert failure and isinstance(failure[0], CorralError), failure
    assert "QEMU closed its monitor" in str(failure[0]), failure
    monkeypatch.undo()

    # The images are clean; the snapshot is still there with its file, and the chain the
    # VM records is on disk and opens, backed as recorded.
    _check_clean(ctx, vm)
    assert [s.name for s in snapshots.list_snapshots(ctx, vm)] == ["s1", "s2"]
    assert (vm_dir / layer).exists()
    chain = _recorded_chain(ctx, vm)
    assert chain == before
    for files in chain.values():
        opened = [Path(layer["filename"]).name for layer in _opens(vm_dir / files[0])]
        assert opened[: len(files)] == files
    assert job["offset"] < job["len"]

    # The VM boots on it and reads back what was written before the snapshot.
    done = cli(home, "start", vm)
    assert done.returncode == 0, done.stderr
    assert shell.run("md5sum /root/big", timeout=120).split()[0] == want

    # The interrupted delete runs again (QEMU merges afresh) and completes.
    snapshots.delete_snapshot(ctx, vm, "s2")
    assert [s.name for s in snapshots.list_snapshots(ctx, vm)] == ["s1"]
    assert not (vm_dir / layer).exists()
    assert shell.run("md5sum /root/big", timeout=120).split()[0] == want
    top = _recorded_chain(ctx, vm)[disk]
    assert len(top) == len(before[disk]) - 1
    assert cli(home, "stop", vm).returncode == 0
    left = _check_clean(ctx, vm)
    assert layer not in {f.name for f in left}
    assert [Path(f["filename"]).name for f in _opens(vm_dir / top[0])][: len(top)] == top
