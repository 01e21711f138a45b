"""Disk snapshot create time, stopped and running: it should be flat and under 100 ms.

Defines two VMs from the reference image in a temporary state directory: one with its root
disk only, one with a 100 GiB blank data disk beside it (both disks are snapshotted
together). Times :func:`corral.compute.snapshots.create_snapshot` (the VM's lock, the
record, ``qemu-img create -b`` per disk, and while the guest runs ``blockdev-add`` and one
``transaction``) with each VM shut off, then running under TCG, N times in a row (each
snapshot on the previous one). Prints the median with the min and max.

With ``--memory``: snapshots with memory instead, of a running reference guest with 256 MiB
and with 1 GiB: create (pause, save RAM and device state, switch the disks, resume) and
revert (destroy, new overlays, QEMU with ``-incoming defer``, load, ``cont``), each N times;
the 256 MiB create and revert should each take under 2 s under TCG.

Usage: ``.venv/bin/python bench/bench_snapshots.py [--runs 11] [--memory]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create, delete
from corral.compute.reference import ensure_reference
from corral.compute.snapshots import create_snapshot
from corral.config import Home
from corral.errors import CorralError

TARGET_MS = 100.0
#: Target for a 256 MiB guest's memory snapshot create and revert, each.
MEMORY_TARGET_MS = 2000.0


def memory_bench(ctx: Corral, runs: int) -> int:
    """Time memory snapshot create and revert of running 256 MiB and 1 GiB guests."""
    from corral.compute.snapshots import revert_snapshot

    rows: list[tuple[str, str, list[float], float]] = []
    for memory in ("256M", "1G"):
        vm = f"bm-{memory.lower()}"
        create(ctx, CreateRequest(name=vm, image="reference", memory=memory))
        lifecycle.start(ctx, vm, wait=True)
        made: list[float] = []
        back: list[float] = []
        for i in range(runs):
            start = time.perf_counter()
            view = create_snapshot(ctx, vm, f"m{i}", memory=True)
            made.append((time.perf_counter() - start) * 1000)
            assert view.memory_file is not None
            size = (ctx.home.vm_dir(vm) / view.memory_file).stat().st_size / 2**20
            start = time.perf_counter()
            revert_snapshot(ctx, vm, f"m{i}")
            back.append((time.perf_counter() - start) * 1000)
        rows += [(memory, "create", made, size), (memory, "revert", back, size)]
        lifecycle.destroy(ctx, vm)
    print(f"memory snapshot of a running guest, median of {runs} runs (min-max), milliseconds")
    print(f"{'guest':>6}  {'step':>7}  {'ms':>22}  {'state file':>10}")
    for memory, step, samples, size in rows:
        median = statistics.median(samples)
        spread = f"{median:8.1f} ({min(samples):6.1f}-{max(samples):6.1f})"
        print(f"{memory:>6}  {step:>7}  {spread:>22}  {size:7.1f} MiB")
    worst = max(statistics.median(r[2]) for r in rows if r[0] == "256M")
    verdict = "within" if worst < MEMORY_TARGET_MS else "OVER"
    print(f"256 MiB worst median {worst:.0f} ms: {verdict} the {MEMORY_TARGET_MS:.0f} ms target")
    return 0 if worst < MEMORY_TARGET_MS else 1


def timed(ctx: Corral, vm: str, prefix: str, runs: int) -> list[float]:
    """Milliseconds of ``runs`` snapshots of ``vm``, after one warm-up."""
    samples: list[float] = []
    for i in range(runs + 1):
        start = time.perf_counter()
        create_snapshot(ctx, vm, f"{prefix}-{i}")
        elapsed = (time.perf_counter() - start) * 1000
        if i:
            samples.append(elapsed)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--memory", action="store_true", help="snapshots with memory")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    ctx = Corral(Home(home))
    if args.memory:
        try:
            ensure_reference(ctx)
            return memory_bench(ctx, args.runs)
        finally:
            for vm in ("bm-256m", "bm-1g"):
                with contextlib.suppress(CorralError):
                    lifecycle.destroy(ctx, vm)
                with contextlib.suppress(CorralError):
                    delete(ctx, vm)
            ctx.close()
            shutil.rmtree(home, ignore_errors=True)
    vms = {"root only": "bs-root", "root + 100 GiB": "bs-data"}
    rows: list[tuple[str, str, list[float]]] = []
    try:
        ensure_reference(ctx)
        create(ctx, CreateRequest(name="bs-root", image="reference", memory="256M"))
        create(
            ctx,
            CreateRequest(name="bs-data", image="reference", memory="256M", data_disks=("100G",)),
        )
        for label, vm in vms.items():
            rows.append((label, "shut off", timed(ctx, vm, "off", args.runs)))
        for label, vm in vms.items():
            lifecycle.start(ctx, vm, wait=True)
            rows.append((label, "running", timed(ctx, vm, "on", args.runs)))
            lifecycle.destroy(ctx, vm)
    finally:
        for vm in vms.values():
            with contextlib.suppress(CorralError):
                lifecycle.destroy(ctx, vm)
            with contextlib.suppress(CorralError):
                delete(ctx, vm)
        ctx.close()
        shutil.rmtree(home, ignore_errors=True)
    print(f"disk snapshot create, median of {args.runs} runs (min-max), milliseconds")
    print(f"{'disks':>16}  {'VM':>9}  {'create_snapshot':>24}")
    worst = 0.0
    for label, state, samples in rows:
        median = statistics.median(samples)
        worst = max(worst, median)
        print(f"{label:>16}  {state:>9}  {median:8.1f} ({min(samples):5.1f}-{max(samples):5.1f})")
    verdict = "within" if worst < TARGET_MS else "OVER"
    print(f"worst median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
