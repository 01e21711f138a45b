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

Usage: ``.venv/bin/python bench/bench_networks.py [--runs N] [--rules | --throughput [--mib 8]]``
(as root; ``--runs`` defaults to 11 for ``--rules`` and 5 for ``--throughput``).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import pickle
import shutil
import signal
import statistics
import subprocess
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


# ---------------------------------------------------------------------------------------------
# --throughput


CORRAL = str(Path(sys.executable).with_name("corral"))
#: The nat network's subnet and its gateway (the bridge's address in the namespace).
SUBNET = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
#: What user-mode NAT shows a guest as the host (QEMU turns it into the host's loopback).
USER_HOST = "10.0.2.2"
#: The port of the receiver in guest ``b`` and of the host's receiver in the namespace.
PORT = 5001
BLOCK = 64 * 1024

#: The host's receiver: every connection is read to its end and answered with the number of
#: bytes read; ``listening`` is printed once the socket listens.
SINK = f"""
import socket, threading
def serve(conn):
    with conn:
        total = 0
        while data := conn.recv(1 << 16):
            total += len(data)
        conn.sendall(b"%d\\n" % total)
srv = socket.create_server(("0.0.0.0", {PORT}), backlog=16)
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

#: Guest ``b``'s receiver: busybox ``nc`` as a persistent server, each connection handed to
#: ``wc -c``, whose count goes back to the sender.
GUEST_SINK = f"setsid nc -ll -p {PORT} -e wc -c </dev/null >/dev/null 2>&1 &"


def _send(host: str, blocks: int) -> str:
    """The sender's shell command: ``blocks`` blocks of zeros through ``nc`` to ``host``,
    timed in the guest by its uptime clock (10 ms steps); prints the start, the end and the
    byte count the receiver answered."""
    clock = "cut -d' ' -f1 /proc/uptime"
    return (
        f"s=$({clock}); n=$(dd if=/dev/zero bs={BLOCK} count={blocks} 2>/dev/null"
        f" | nc {host} {PORT}); e=$({clock}); echo corral-bench $s $e $n"
    )


class Stage:
    """A network namespace with corral's state directory in it: every ``corral`` command,
    the on-demand corrald, its bridge, dnsmasq and the guests' QEMU run inside it."""

    def __init__(self) -> None:
        from pyroute2 import netns

        self.root = Path(tempfile.mkdtemp(prefix="cbn-", dir="/tmp"))
        self.state = self.root / "state"
        self.home = self.root / "home"
        self.home.mkdir()
        self.ns = f"crbench-{uuid.uuid4().hex[:8]}"
        netns.create(self.ns)
        #: The receiver and the launches under way: ended first on clean-up.
        self.procs: list[subprocess.Popen[str]] = []
        self.exec(["ip", "link", "set", "lo", "up"])

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CORRAL_HOME=str(self.state), HOME=str(self.home), COLUMNS="200")
        for name in ("CORRAL_URL", "CORRAL_TOKEN", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
            env.pop(name, None)
        return env

    def exec(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def corral(self, *args: str, timeout: float = 300) -> str:
        result = self.exec([CORRAL, *args], timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"corral {' '.join(args)}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def ssh(self, vm: str, command: str, timeout: float = 120) -> str:
        return self.corral("ssh", vm, "--", command, timeout=timeout)

    def start_sink(self) -> None:
        """The host's receiver, inside the namespace (on every address of it)."""
        sink = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", SINK],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(sink)
        assert sink.stdout is not None
        line = sink.stdout.readline()
        if line.strip() != "listening":
            raise RuntimeError(f"the host's receiver did not start: {line!r}")

    def close(self) -> None:
        """Everything the run made goes: the receiver, the guests, the network, corrald,
        the namespace (with any link left in it) and the state directory."""
        from pyroute2 import netns

        from corral.api.server import PIDFILE_NAME

        for proc in self.procs:
            proc.kill()
            proc.wait()
        try:
            for vm in json.loads(self.corral("list", "--all", "--json", timeout=60)):
                self.exec([CORRAL, "destroy", vm["name"]], timeout=60)
                self.exec([CORRAL, "delete", vm["name"]], timeout=60)
            for net in json.loads(self.corral("net", "list", "--json", timeout=60)):
                self.exec([CORRAL, "net", "delete", net["name"]], timeout=60)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            print(
                f"# clean-up through corral failed ({exc}); killing what is left", file=sys.stderr
            )
        pidfiles = [self.state / PIDFILE_NAME, *self.state.glob("vms/*/qemu.pid")]
        for pid in [*map(_read_pid, pidfiles), *_pids_naming(self.state)]:
            if pid is not None:
                _kill(pid)
        netns.remove(self.ns)
        shutil.rmtree(self.root, ignore_errors=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _pids_naming(state: Path) -> list[int]:
    """Processes whose command line names ``state`` (dnsmasq, QEMU, corrald)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(state).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _transfer(stage: Stage, vm: str, host: str, blocks: int) -> float:
    """One transfer from ``vm`` to ``host``; MB/s (10^6 bytes) by the guest's clock."""
    out = stage.ssh(vm, _send(host, blocks))
    line = next((ln for ln in out.splitlines() if ln.startswith("corral-bench ")), "")
    fields = line.split()
    if len(fields) != 4 or int(fields[3]) != blocks * BLOCK:
        raise RuntimeError(f"{vm} -> {host}: {blocks * BLOCK} bytes not all received: {out!r}")
    seconds = float(fields[2]) - float(fields[1])
    return blocks * BLOCK / 1e6 / max(seconds, 0.01)


def _await_listening(stage: Stage, vm: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while f":{PORT} " not in stage.ssh(vm, "netstat -ltn"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {PORT} in {vm}")


PATHS = (
    ("nat network: guest -> guest", "a", "b"),
    ("nat network: guest -> host", "a", GATEWAY),
    ("user-mode NAT: guest -> host", "u", USER_HOST),
    ("guest's own loopback (no NIC)", "a", "127.0.0.1"),
)
#: The row the others are compared with.
BASE = PATHS[2][0]


def _launch(stage: Stage, name: str, network: str) -> subprocess.Popen[str]:
    argv = ["launch", name, "--image", "reference", "--type", "t1.micro", "--key", "k1"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", stage.ns, CORRAL, *argv, "--net", network],
        env=stage.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    stage.procs.append(proc)
    return proc


def _measure_throughput(stage: Stage, runs: int, blocks: int) -> dict[str, list[float]]:
    from corral.compute.context import Corral
    from corral.compute.reference import ensure_reference
    from corral.config import Home

    ctx = Corral(Home(stage.state))
    ensure_reference(ctx)
    ctx.close()
    stage.corral("key", "create", "k1")
    stage.corral("net", "create", "lan", "--type", "nat", "--subnet", SUBNET)
    launches = {name: _launch(stage, name, net) for name, net in (("a", "lan"), ("b", "lan"))}
    launches["u"] = _launch(stage, "u", "user")
    for name, proc in launches.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"corral launch {name}:\n{out}")
    stage.start_sink()
    for receiver in ("a", "b"):
        stage.ssh(receiver, GUEST_SINK)
        _await_listening(stage, receiver)
    results: dict[str, list[float]] = {label: [] for label, _, _ in PATHS}
    for run in range(runs + 1):  # the first round warms up and is left out
        for label, vm, host in PATHS:
            rate = _transfer(stage, vm, host, blocks)
            if run:
                results[label].append(rate)
        print(f"# round {run}/{runs} done", file=sys.stderr, flush=True)
    return results


def throughput(runs: int, mib: int) -> bool:
    """Guest TCP throughput, a nat network against user-mode NAT, inside a namespace.

    Guests ``a`` and ``b`` (reference guests, ``t1.micro``) are on a ``nat`` network; ``u``
    has user-mode NAT, QEMU's default, where guests cannot reach each other. Each transfer
    is ``dd`` of ``mib`` MiB of zeros piped into busybox ``nc``, timed inside the sending
    guest: ``a`` to ``b`` (``nc -ll -e wc -c``), ``a`` to the host through the network's
    gateway, and ``u`` to the host through ``10.0.2.2``; the host's receiver runs in the
    namespace. A fourth row sends from ``a`` to its own loopback: the guest's TCP stack and
    ``nc`` under TCG with no NIC at all (sender and receiver on its one vCPU). The paths take turns
    round by round; one warm-up round is left out.
    Target: the nat network's guest-to-host path beats user-mode NAT's.
    """
    blocks = mib * 1024 * 1024 // BLOCK
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    stage = Stage()
    try:
        results = _measure_throughput(stage, runs, blocks)
    finally:
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs whole
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stage.close()
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, previous)
    base = statistics.median(results[BASE])
    print(
        f"guest TCP throughput under TCG, {mib} MiB per transfer (busybox dd | nc),"
        f" {runs} runs interleaved, MB/s"
    )
    print(f"{'':<38} {'median':>9} {'min':>9} {'max':>9}   ratio")
    for label, _, _ in PATHS:
        print(f"{_row(label, results[label])}   {statistics.median(results[label]) / base:.2f}x")
    ratio = statistics.median(results[PATHS[1][0]]) / base
    verdict = "met" if ratio > 1 else "NOT met"
    print(
        f"target: the nat network's guest -> host beats user-mode NAT's ({ratio:.2f}x): {verdict}"
    )
    return ratio > 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs per row (default 11; --throughput: 5)")
    parser.add_argument("--mib", type=int, default=8, help="--throughput: MiB per transfer")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rules", action="store_true", help="security-group apply time (default)")
    mode.add_argument("--throughput", action="store_true", help="guest TCP throughput")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark makes a network namespace", file=sys.stderr)
        return 2
    if args.throughput:
        return 0 if throughput(args.runs or 5, args.mib) else 1
    return 0 if rules(args.runs or 11) else 1


if __name__ == "__main__":
    sys.exit(main())
