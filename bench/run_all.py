"""Runs every benchmark under ``bench/`` in sequence and prints their tables.

Each benchmark is a separate process (its own clean-up, its own exit status: 0 when its target
is met). The tables are printed as they come, then a summary of the statuses.

Usage: ``.venv/bin/python bench/run_all.py [--skip bench_launch ...]``
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "bench_clone",
    "bench_launch",
    "bench_list",
    "bench_ssh_launch",
    "bench_api",
    "bench_networks",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", action="append", default=[], choices=BENCHMARKS)
    args = parser.parse_args()

    print(
        f"corral benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()},"
        f" {platform.release()}, Python {platform.python_version()}"
    )
    statuses: dict[str, str] = {}
    for name in BENCHMARKS:
        if name in args.skip:
            continue
        print(f"\n== {name}", flush=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=False)
        took = time.monotonic() - start
        statuses[name] = (
            "target met" if proc.returncode == 0 else f"target missed or failed ({proc.returncode})"
        )
        print(f"({name} took {took:.0f} s)", flush=True)
    print("\n== summary")
    for name, status in statuses.items():
        print(f"{name:14} {status}")
    return 0 if all(s == "target met" for s in statuses.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
