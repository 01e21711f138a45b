"""``corral list`` with 200 defined VMs: wall time of the whole command, and where it goes.

Creates 200 VMs (linked clones of the reference image, through the Python API) in a temporary
state directory, then times fresh processes, interleaved round by round, median of N runs after
one warm-up:

- ``python -c pass`` (the interpreter's own start-up) and ``python -c "import corral.cli.main"``
  (what every ``corral`` command imports before it parses its arguments);
- ``corral list --json`` (running VMs: none here, but every record is read and checked),
  ``corral list --all --json`` (all 200) and ``corral list --all`` (the Rich table).

Each is timed twice over:

``user``
    as a user's Python runs it: bytecode caches are written on the first run and read
    afterwards (here into a temporary ``PYTHONPYCACHEPREFIX``, so the source tree is untouched).
    The target is judged on this one.
``no .pyc``
    as this development environment runs it, with ``PYTHONDONTWRITEBYTECODE=1``: the
    installed packages have their ``.pyc`` files, corral's own modules are compiled on every run.

Then it shows where the time of one ``corral list --all --json`` goes: ``-X importtime`` self
times summed by top-level package, and each heavy dependency imported alone.

Usage: ``.venv/bin/python bench/bench_list.py [--runs 11] [--vms 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PYTHON = sys.executable
CORRAL = str(Path(sys.executable).with_name("corral"))
TARGET_MS = 300.0


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def make_vms(home: Path, count: int) -> float:
    """Import the reference image and define ``count`` VMs; seconds the definitions took."""
    from corral.compute.context import Corral
    from corral.compute.define import CreateRequest, create
    from corral.compute.reference import ensure_reference
    from corral.config import Home

    ctx = Corral(Home(home))
    try:
        ensure_reference(ctx)
        start = time.perf_counter()
        for i in range(count):
            create(ctx, CreateRequest(name=f"vm{i:03d}", image="reference", memory="256M"))
        return time.perf_counter() - start
    finally:
        ctx.close()


def run_ms(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed, proc.stdout


def importtime_by_package(env: dict[str, str], argv: list[str]) -> tuple[dict[str, float], float]:
    """``-X importtime`` self times (ms) of one run, summed by top-level package."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    stdlib = set(sys.stdlib_module_names)
    totals: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line[len("import time:") :].split("|")
        top = name.strip().split(".")[0]
        group = top if top not in stdlib and not top.startswith("_") else "(standard library)"
        totals[group] += int(self_us) / 1000
    return dict(totals), sum(totals.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--vms", type=int, default=200)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cbls-", dir="/tmp"))
    pycache = Path(tempfile.mkdtemp(prefix="cbls-pyc-", dir="/tmp"))
    try:
        log(f"defining {args.vms} VMs in {home}")
        define_s = make_vms(home, args.vms)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        base.update(CORRAL_HOME=str(home), COLUMNS="160")
        envs = {
            "user": dict(base, PYTHONPYCACHEPREFIX=str(pycache)),
            "no .pyc": dict(base, PYTHONDONTWRITEBYTECODE="1"),
        }
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "import corral.cli.main": [PYTHON, "-c", "import corral.cli.main"],
            "corral list --json": [CORRAL, "list", "--json"],
            "corral list --all --json": [CORRAL, "list", "--all", "--json"],
            "corral list --all (table)": [CORRAL, "list", "--all"],
        }
        samples: dict[tuple[str, str], list[float]] = defaultdict(list)
        for round_no in range(args.runs + 1):
            for mode, env in envs.items():
                for label, argv in commands.items():
                    elapsed, out = run_ms(argv, env)
                    if label == "corral list --all --json" and round_no == 0:
                        listed = len(json.loads(out))
                        if listed != args.vms:
                            raise RuntimeError(f"listed {listed} VMs, expected {args.vms}")
                    if round_no:
                        samples[(mode, label)].append(elapsed)
        by_package, import_total = importtime_by_package(
            envs["user"], [CORRAL, "list", "--all", "--json"]
        )
        alone: dict[str, list[float]] = defaultdict(list)
        modules = [
            "import typer",
            "import rich.console, rich.table",
            "from pydantic import BaseModel",
            "import sqlalchemy",
            "import sqlalchemy.orm",
            "import typer, corral.spec.vm, corral.store.models",
        ]
        for _ in range(5):
            for code in ["pass", *modules]:
                alone[code].append(run_ms([PYTHON, "-c", code], envs["user"])[0])
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(pycache, ignore_errors=True)

    print(
        f"corral list with {args.vms} defined VMs: wall time of a fresh process,"
        f" median of {args.runs} runs (min-max), milliseconds"
    )
    modes = list(envs)
    header = "".join(f"  {m:>22}" for m in modes)
    print(f"{'':28}{header}")
    for label in commands:
        cells = ""
        for mode in modes:
            s = samples[(mode, label)]
            cells += f"  {statistics.median(s):8.0f} ({min(s):5.0f}-{max(s):5.0f})"
        print(f"{label:28}{cells}")
    print(f"({args.vms} VMs defined through the Python API in {define_s:.1f} s)")

    print()
    print(
        f"where one 'corral list --all --json' goes (user mode): -X importtime self times,"
        f" {import_total:.0f} ms of imports in all"
    )
    for group, ms in sorted(by_package.items(), key=lambda kv: -kv[1]):
        if ms >= 1:
            print(f"  {group:26} {ms:6.0f} ms")
    print("  (a module's self time includes its top-level code: building pydantic and ORM classes)")
    pass_ms = statistics.median(alone["pass"])
    print("each alone in a fresh interpreter, median of 5, minus 'python -c pass':")
    for code in modules:
        print(f"  {code:50} {statistics.median(alone[code]) - pass_ms:6.0f} ms")
    print("  (the last: the CLI, the ORM and the spec models, which any list through them needs)")

    judged = statistics.median(samples[("user", "corral list --json")])
    verdict = "within" if judged < TARGET_MS else "OVER"
    print(
        f"corral list --json (user mode): {judged:.0f} ms, {verdict} the {TARGET_MS:.0f} ms target"
    )
    return 0 if judged < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
