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

With ``--merge``: snapshot delete (merge) time per GiB written. A VM with a 4 GiB blank data
disk gets a snapshot, N MiB of data written into its data disk's new layer (``qemu-io``,
while shut off), and a second snapshot that freezes that layer; deleting the second snapshot
merges the layer into the file built on it. Timed with the VM running under TCG
(``block-stream`` by QEMU, the chain of both disks) and shut off (safe ``qemu-img rebase``),
for each size in ``--sizes``; prints seconds, MiB/s and seconds per GiB written.

Usage: ``.venv/bin/python bench/bench_snapshots.py [--runs 11] [--memory | --merge]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from corral.compute import lifecycle, records
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create, delete
from corral.compute.reference import ensure_reference
from corral.compute.snapshots import create_snapshot, delete_snapshot
from corral.config import Home
from corral.errors import CorralError

TARGET_MS = 100.0
#: Target for a 256 MiB guest's memory snapshot create and revert, each.
MEMORY_TARGET_MS = 2000.0
#: Target for a merge, running or shut off: seconds per GiB written into the deleted layer.
MERGE_TARGET_S_PER_GIB = 60.0
#: The blank data disk the merge benchmark writes into.
MERGE_DISK = "data1"


def _top(ctx: Corral, vm: str, disk: str) -> Path:
    """The file ``disk`` of ``vm`` writes to now."""
    with ctx.db.session() as session:
        row = records.load(ctx, session, vm).row
        assert row.disk_chain
        top: str = json.loads(row.disk_chain)["disks"][disk][0]
    return ctx.home.vm_dir(vm) / top


def _fill(path: Path, mib: int) -> None:
    """Write ``mib`` MiB of non-zero data at the start of qcow2 file ``path``."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", str(path)],
        check=True,
        capture_output=True,
    )


def merge_once(ctx: Corral, vm: str, mib: int, running: bool, tag: str) -> float:
    """Seconds to delete a snapshot whose data-disk layer holds ``mib`` MiB."""
    create_snapshot(ctx, vm, f"{tag}-a")
    _fill(_top(ctx, vm, MERGE_DISK), mib)
    create_snapshot(ctx, vm, f"{tag}-b")
    if running:
        lifecycle.start(ctx, vm, wait=True)
    start = time.perf_counter()
    delete_snapshot(ctx, vm, f"{tag}-b")
    elapsed = time.perf_counter() - start
    if running:
        lifecycle.destroy(ctx, vm)
    delete_snapshot(ctx, vm, f"{tag}-a")  # back to one layer: the next run starts alike
    return elapsed


def merge_bench(ctx: Corral, runs: int, sizes: list[int]) -> int:
    """Time snapshot deletes (merges) of ``sizes`` MiB layers, running and shut off."""
    vm = "bm-merge"
    create(ctx, CreateRequest(name=vm, image="reference", memory="256M", data_disks=("4G",)))
    rows: list[tuple[int, str, list[float]]] = []
    for mib in sizes:
        for running, how in ((True, "running"), (False, "shut off")):
            samples = [
                merge_once(ctx, vm, mib, running, f"{how[:3]}{mib}-{i}") for i in range(runs)
            ]
            rows.append((mib, how, samples))
    print(f"snapshot delete (merge) of a layer holding N MiB, median of {runs} runs (min-max)")
    print(f"{'MiB':>6}  {'VM':>9}  {'how':>15}  {'seconds':>22}  {'MiB/s':>7}  {'s/GiB':>6}")
    worst = 0.0
    for mib, how, samples in rows:
        median = statistics.median(samples)
        per_gib = median * 1024 / mib
        worst = max(worst, per_gib)
        tool = "block-stream" if how == "running" else "qemu-img rebase"
        spread = f"{median:7.2f} ({min(samples):5.2f}-{max(samples):5.2f})"
        print(f"{mib:>6}  {how:>9}  {tool:>15}  {spread:>22}  {mib / median:7.1f}  {per_gib:6.1f}")
    verdict = "within" if worst < MERGE_TARGET_S_PER_GIB else "OVER"
    print(f"worst {worst:.1f} s per GiB: {verdict} the {MERGE_TARGET_S_PER_GIB:.0f} s target")
    return 0 if worst < MERGE_TARGET_S_PER_GIB else 1


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
    parser.add_argument("--merge", action="store_true", help="snapshot delete (merge) time")
    parser.add_argument("--sizes", default="128,512", help="--merge: MiB written, comma-separated")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    ctx = Corral(Home(home))
    if args.merge:
        try:
            ensure_reference(ctx)
            return merge_bench(ctx, args.runs, [int(s) for s in args.sizes.split(",")])
        finally:
            with contextlib.suppress(CorralError):
                lifecycle.destroy(ctx, "bm-merge")
            with contextlib.suppress(CorralError):
                delete(ctx, "bm-merge")
            ctx.close()
            shutil.rmtree(home, ignore_errors=True)
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
