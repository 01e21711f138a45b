"""Linked-clone time against base size: it should be flat and under 50 ms.

For sparse qcow2 bases of 1, 10 and 100 GiB, times :func:`corral.storage.disks.create_clone`
(header read, O_EXCL reservation, ``prlimit`` + ``qemu-img create -b``) and, as a baseline, a
bare ``qemu-img create -f qcow2 -b BASE -F qcow2``. Prints the median of N runs (after one
warm-up) with the min and max.

Usage: ``.venv/bin/python bench/bench_clone.py [--runs 11] [--dir /var/lib/corral]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from corral.storage.disks import create_clone

SIZES_GIB = (1, 10, 100)
TARGET_MS = 50.0


def timed(action: Callable[[Path], None], workdir: Path, runs: int) -> list[float]:
    """Milliseconds of ``action(dest)`` for ``runs`` fresh destinations, after one warm-up."""
    samples: list[float] = []
    for i in range(runs + 1):
        dest = workdir / f"clone-{i}.qcow2"
        start = time.perf_counter()
        action(dest)
        elapsed = (time.perf_counter() - start) * 1000
        dest.unlink()
        if i:
            samples.append(elapsed)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the images")
    args = parser.parse_args()

    rows: list[tuple[int, list[float], list[float]]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        for gib in SIZES_GIB:
            base = workdir / f"base-{gib}G.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{gib}G"], check=True
            )

            def corral(dest: Path, base: Path = base) -> None:
                create_clone(base, dest)

            def baseline(dest: Path, base: Path = base) -> None:
                argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
                subprocess.run([*argv, "-b", str(base), "-F", "qcow2", str(dest)], check=True)

            rows.append(
                (gib, timed(corral, workdir, args.runs), timed(baseline, workdir, args.runs))
            )

    print(f"linked clone, median of {args.runs} runs (min-max), milliseconds")
    print(f"{'base':>8}  {'create_clone':>22}  {'bare qemu-img create':>22}")
    worst = 0.0
    for gib, ours, bare in rows:
        median = statistics.median(ours)
        worst = max(worst, median)
        print(
            f"{gib:>5} GiB  {median:8.1f} ({min(ours):5.1f}-{max(ours):5.1f})"
            f"  {statistics.median(bare):8.1f} ({min(bare):5.1f}-{max(bare):5.1f})"
        )
    verdict = "within" if worst < TARGET_MS else "OVER"
    print(f"worst median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
