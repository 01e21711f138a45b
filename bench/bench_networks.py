"""Virtual networks: the time to apply security-group rules, and guest throughput.

``--rules`` (the default): in a network namespace made for the run (never the machine's own
interfaces), a ``nat`` network's bridge with 20 guest taps, every tap guarded by one group of
N rules (10, 100, 1,000: tcp/udp port ranges from CIDRs and from a group). Times, per N:

* ``nft -f``: loading corral's whole ruleset (both tables, one transaction) as
  :func:`corral.net.plan.ruleset` renders it;
* ``apply``: :func:`corral.net.apply.apply` of a plan whose group has one rule changed, which
  is what a live ``corral sg rule add`` costs on the host (links and dnsmasq checked, the
  ruleset replaced).

Prints medians with min and max. Target: 1,000 rules applied in under 1 s.

``--throughput``: see :func:`throughput` (two reference guests on a ``nat`` network next to
the user-mode NAT default).

Usage: ``.venv/bin/python bench/bench_networks.py [--runs 11] [--rules | --throughput]``
(as root).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Target: a change of a 1,000-rule group reaches the host in under this many milliseconds.
RULES_TARGET_MS = 1000.0
RULE_COUNTS = (10, 100, 1000)
GUARDED_PORTS = 20


def in_namespace(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a forked child inside a new network namespace (removed afterwards)."""
    from pyroute2 import netns  # type: ignore[import-untyped]

    name = f"crbench-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    read, write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                netns.setns(name)
                payload = pickle.dumps(("ok", fn()))
            except BaseException as exc:
                payload = pickle.dumps(("err", f"{type(exc).__name__}: {exc}"))
            with os.fdopen(write, "wb") as out:
                out.write(payload)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as inp:
            kind, value = pickle.loads(inp.read())
        os.waitpid(pid, 0)
    finally:
        netns.remove(name)
    if kind == "err":
        raise SystemExit(f"error in the namespace: {value}")
    return value


def _plan(rules: int, variant: int) -> Any:
    """A nat network, :data:`GUARDED_PORTS` taps guarded by one group of ``rules`` rules
    (``variant`` changes the last rule's port)."""
    from corral.net.plan import HostPlan, Lease, Port, tap_name
    from corral.net.security import Guard, Rule, SecurityPlan
    from corral.spec.net import NetworkSpec

    lan = NetworkSpec(name="lan", kind="nat", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
    ports, leases, guards = [], [], []
    for index in range(GUARDED_PORTS):
        tap = tap_name(f"{index:011x}")
        mac = f"52:54:00:00:01:{index:02x}"
        address = ipaddress.IPv4Address(f"10.77.0.{10 + index}")
        ports.append(Port(tap, "lan", mac))
        leases.append(Lease(mac, address, f"vm{index}"))
        guards.append(Guard(tap, mac, address, ("web",)))
    group: list[Rule] = []
    for index in range(rules):
        port = 1000 + index if index < rules - 1 else 20000 + variant
        if index % 3 == 2:
            group.append(Rule("in", "udp", port, port, None, "web"))
        else:
            cidr = ipaddress.IPv4Network(f"10.{index // 250 % 250}.{index % 250}.0/24")
            group.append(Rule("in", "tcp", port, port + index % 5, cidr))
    security = SecurityPlan(groups={"web": tuple(group)}, guards=tuple(guards))
    return HostPlan(
        networks=(lan,), ports=tuple(ports), leases={"lan": tuple(leases)}, security=security
    )


def _measure_rules(runs: int) -> list[tuple[int, list[float], list[float]]]:
    """Inside the namespace: per rule count, the nft load and the apply times (ms)."""
    from corral.net import nft
    from corral.net.apply import apply, teardown
    from corral.net.plan import ruleset

    os.system("ip link set lo up")
    state = Path(tempfile.mkdtemp(prefix="crbench-"))
    results = []
    try:
        for count in RULE_COUNTS:
            apply(_plan(count, 0), state)  # links, dnsmasq: made once
            loads, applies = [], []
            for run in range(runs):
                script = ruleset(_plan(count, run))
                start = time.perf_counter()
                nft.load(script)
                loads.append((time.perf_counter() - start) * 1000)
                plan = _plan(count, run + 1000)
                start = time.perf_counter()
                apply(plan, state)
                applies.append((time.perf_counter() - start) * 1000)
            results.append((count, loads, applies))
        teardown(state)
    finally:
        import shutil

        shutil.rmtree(state, ignore_errors=True)
    return results


def _row(label: str, values: list[float]) -> str:
    return f"{label:<38} {statistics.median(values):>9.1f} {min(values):>9.1f} {max(values):>9.1f}"


def rules(runs: int) -> bool:
    print(f"security-group rules, {GUARDED_PORTS} guarded taps, {runs} runs, milliseconds")
    print(f"{'':<38} {'median':>9} {'min':>9} {'max':>9}")
    met = True
    for count, loads, applies in in_namespace(lambda: _measure_rules(runs)):
        print(_row(f"{count:>5} rules: nft -f (whole table)", loads))
        print(_row(f"{count:>5} rules: apply (one rule changed)", applies))
        if count == 1000:
            met = statistics.median(applies) < RULES_TARGET_MS
    verdict = "met" if met else "NOT met"
    print(f"target: 1,000 rules applied in under {RULES_TARGET_MS:.0f} ms: {verdict}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rules", action="store_true", help="security-group apply time (default)")
    mode.add_argument("--throughput", action="store_true", help="guest TCP throughput")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark makes a network namespace", file=sys.stderr)
        return 2
    if args.throughput:
        return 0 if throughput(args.runs) else 1
    return 0 if rules(args.runs) else 1


def throughput(runs: int) -> bool:
    raise SystemExit("--throughput: not yet")


if __name__ == "__main__":
    sys.exit(main())
