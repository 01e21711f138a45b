"""Disk snapshot create time, stopped and running: it should be flat and under 100 ms.

Defines two VMs from the reference image in a temporary state directory: one with its root
disk only, one with a 100 GiB blank data disk beside it (both disks are snapshotted
together). Times :func:`corral.compute.snapshots.create_snapshot` (the VM's lock, the
record, ``qemu-img create -b`` per disk, and while the guest runs ``blockdev-add`` and one
``transaction``) with each VM shut off, then running under TCG, N times in a row (each
snapshot on the previous one). Prints the median with the min and max.

Usage: ``.venv/bin/python bench/bench_snapshots.py [--runs 11]``
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
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    ctx = Corral(Home(home))
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
