"""corrald's REST API with 1,000 VM records: list latency, create-to-answer latency, throughput.

Defines the VMs (linked clones of the reference image, through the Python API) in a temporary
state directory, makes an admin user with an API token, then starts the real daemon
(``corral serve --bind 127.0.0.1:PORT --detach``) and measures it from this process:

- ``GET /api/v1/vms?limit=100`` (the default page) and ``?limit=1000``, over the UNIX socket
  (the local administrator, no token) and over TCP with the bearer token: p50/p99 of N
  sequential requests after warm-up, the four rows interleaved request by request so that they
  share the machine's noise;
- the create request: ``POST /api/v1/vms`` timed to its answer (201 or 202) if the OpenAPI
  document has it; otherwise ``DELETE /api/v1/vms/{name}`` of a defined VM, timed to its 202
  (the task is then awaited, untimed, before the next request). The table says which;
- throughput: C concurrent clients (threads, each with its own keep-alive ``httpx.Client``)
  doing ``GET /api/v1/vms?limit=100`` for a fixed time, on each transport: requests/s and
  p50/p99 under that load. The clients share this process and the machine's CPUs with the
  daemon, so the figure is what one such host serves, not the daemon alone;
- where one ``GET ?limit=100`` goes, in-process (the daemon's own steps, called directly).

Every request is checked (status, and 1,000 VMs in ``total``). Traffic goes only to the UNIX
socket and 127.0.0.1. The daemon (``corral serve --stop``), the created VMs and the state
directory are removed at the end, also on Ctrl-C or SIGTERM.

Targets: p50 of ``GET /api/v1/vms`` (``limit=100``, both transports) under 50 ms, and p50 of
the create request under 30 ms.

Usage: ``.venv/bin/python bench/bench_api.py [--vms 1000] [--requests 200] [--clients 50]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

CORRAL = str(Path(sys.executable).with_name("corral"))
LIST_TARGET_MS = 50.0
CREATE_TARGET_MS = 30.0
#: Wall-time bound of each sequential phase, whatever ``--requests`` says.
PHASE_LIMIT_S = 240.0
REQUEST_TIMEOUT_S = 30.0


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
            create(ctx, CreateRequest(name=f"b{i:04d}", image="reference", memory="128M"))
        return time.perf_counter() - start
    finally:
        ctx.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def corral(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [CORRAL, *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"corral {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def cleanup_on_signal() -> Iterator[None]:
    """Turn SIGTERM into an exception, so that every ``finally`` below runs."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Daemon:
    """The detached corrald of the temporary state directory, and clients for it."""

    home: Path
    env: dict[str, str]
    port: int
    token: str = ""
    started: bool = False

    def start(self) -> None:
        corral(self.env, "serve", "--bind", f"127.0.0.1:{self.port}", "--detach")
        self.started = True

    def stop(self) -> None:
        if not self.started:
            return
        try:
            corral(self.env, "serve", "--stop")
        except (RuntimeError, subprocess.SubprocessError) as exc:
            log(f"corral serve --stop: {exc}")
            pidfile = self.home / "corrald.pid"
            with suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        self.started = False

    def client(self, transport: str) -> httpx.Client:
        if transport == "unix":
            return httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.home / "corrald.sock")),
                base_url="http://corrald",
                timeout=REQUEST_TIMEOUT_S,
            )
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=REQUEST_TIMEOUT_S,
        )


def timed(
    call: Callable[[], httpx.Response], expect: tuple[int, ...]
) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code not in expect:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} answered"
            f" {response.status_code}: {response.text[:300]}"
        )
    return elapsed, response


def get_list(client: httpx.Client, limit: int, vms: int) -> float:
    elapsed, response = timed(lambda: client.get("/api/v1/vms", params={"limit": limit}), (200,))
    body = response.json()
    if body["total"] != vms or len(body["items"]) != min(limit, vms):
        raise RuntimeError(f"listed total={body['total']} items={len(body['items'])}")
    return elapsed


def p(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def wait_task(client: httpx.Client, location: str) -> str:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        status = str(client.get(location).json()["status"])
        if status in ("success", "error", "cancelled"):
            return status
        time.sleep(0.01)
    raise RuntimeError(f"task {location} not finished within 60 s")


@dataclass
class Load:
    """The result of one throughput phase."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def throughput(daemon: Daemon, transport: str, clients: int, seconds: float, vms: int) -> Load:
    """``clients`` threads doing ``GET ?limit=100`` until ``seconds`` have passed.

    Each thread stops at the deadline or after ``cap`` requests; a request that finishes
    after the deadline is not counted.
    """
    cap = 100_000
    lock = threading.Lock()
    load = Load(seconds)
    ready = threading.Barrier(clients + 1, timeout=60)
    stop = threading.Event()
    deadline = [0.0]

    def worker() -> None:
        mine: list[float] = []
        with daemon.client(transport) as client:
            try:
                ready.wait()
                while not stop.is_set() and len(mine) < cap:
                    ms = get_list(client, 100, vms)
                    if time.perf_counter() > deadline[0]:
                        break
                    mine.append(ms)
            except (httpx.HTTPError, RuntimeError, threading.BrokenBarrierError) as exc:
                with lock:
                    load.errors.append(repr(exc))
        with lock:
            load.latencies.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        deadline[0] = time.perf_counter() + seconds
        ready.wait()
        while time.perf_counter() < deadline[0] and any(t.is_alive() for t in threads):
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)
    return load


def create_path(client: httpx.Client) -> bool:
    """Whether the daemon's OpenAPI document has ``POST /api/v1/vms``."""
    document = client.get("/api/v1/openapi.json").json()
    return "post" in document.get("paths", {}).get("/api/v1/vms", {})


def time_creates(daemon: Daemon, count: int, warmup: int) -> tuple[str, list[float]]:
    """p50/p99 material for the create request, or its stand-in; which request was timed."""
    samples: list[float] = []
    started = time.monotonic()
    with daemon.client("unix") as client:
        if create_path(client):
            label = "POST /api/v1/vms (create) -> 201/202"
            try:
                for i in range(warmup + count):
                    if time.monotonic() - started > PHASE_LIMIT_S:
                        break
                    body = {"name": f"c{i:04d}", "image": "reference", "memory": "128M"}
                    ms, response = timed(
                        lambda b=body: client.post("/api/v1/vms", json=b), (201, 202)
                    )
                    if response.status_code == 202:
                        wait_task(client, response.headers["Location"])
                    if i >= warmup:
                        samples.append(ms)
                return label, samples
            except RuntimeError as exc:
                if samples:
                    raise
                log(f"POST /api/v1/vms is there but did not create: {exc}; timing DELETE")
        label = "DELETE /api/v1/vms/{name} (defined VM) -> 202"
        for i in range(warmup + count):
            if time.monotonic() - started > PHASE_LIMIT_S:
                break
            ms, response = timed(lambda n=i: client.delete(f"/api/v1/vms/b{n:04d}"), (202,))
            status = wait_task(client, response.headers["Location"])
            if status != "success":
                raise RuntimeError(f"deleting b{i:04d}: task ended {status}")
            if i >= warmup:
                samples.append(ms)
    return label, samples


def where_it_goes(home: Path, runs: int) -> dict[str, float]:
    """Median ms of each step of one ``GET /api/v1/vms?limit=100``, called in-process."""
    from corral.access.local import local_principal
    from corral.access.scope import visible
    from corral.api.routers.vms import vm_read
    from corral.api.schemas import Page, VmRead
    from corral.compute.context import Corral
    from corral.compute.inventory import page_vms
    from corral.config import Home
    from corral.store.models import VmRow

    ctx = Corral(Home(home))
    steps: dict[str, list[float]] = {}

    def step(name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        return out

    try:
        principal = local_principal(ctx, os.geteuid())
        for _ in range(runs):
            where = step(
                "scope (local admin: every project)", lambda: visible(principal, VmRow.project_id)
            )
            views, total = step(
                "page_vms: reconcile active, count, read 100",
                lambda w=where: page_vms(ctx, w, None, 100, 0),
            )
            reads = step(
                "vm_read() of the page (pydantic)", lambda vs=views: [vm_read(v) for v in vs]
            )
            result = Page[VmRead](items=reads, total=total, limit=100, offset=0)
            step("JSON of the page (model_dump_json)", result.model_dump_json)
    finally:
        ctx.close()
    return {name: statistics.median(s) for name, s in steps.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200, help="timed list requests per row")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--creates", type=int, default=100)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each throughput phase")
    args = parser.parse_args()
    if args.creates + 5 > args.vms:
        parser.error("--creates must be at least 5 below --vms (the DELETE stand-in needs VMs)")

    home = Path(tempfile.mkdtemp(prefix="cbapi-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["CORRAL_HOME"] = str(home)
    daemon = Daemon(home, env, free_port())
    rows = {
        ("unix", 100): "GET /api/v1/vms?limit=100   unix",
        ("tcp", 100): "GET /api/v1/vms?limit=100   tcp+token",
        ("unix", 1000): "GET /api/v1/vms?limit=1000  unix",
        ("tcp", 1000): "GET /api/v1/vms?limit=1000  tcp+token",
    }
    lists: dict[tuple[str, int], list[float]] = {key: [] for key in rows}
    loads: dict[str, Load] = {}
    try:
        with cleanup_on_signal():
            log(f"defining {args.vms} VMs in {home}")
            define_s = make_vms(home, args.vms)
            out = corral(env, "user", "create", "bencher", "--role", "admin", "--token")
            found = re.search(r"crl_\S+", out)
            if found is None:
                raise RuntimeError(f"no token in: {out}")
            daemon.token = found.group(0)
            log(f"starting corrald on 127.0.0.1:{daemon.port}")
            daemon.start()

            log(f"list latency: {args.warmup} warm-up and {args.requests} timed per row")
            clients = {t: daemon.client(t) for t in ("unix", "tcp")}
            try:
                started = time.monotonic()
                for i in range(args.warmup + args.requests):
                    if time.monotonic() - started > PHASE_LIMIT_S:
                        log(f"list phase stopped after {PHASE_LIMIT_S:.0f} s")
                        break
                    for transport, limit in rows:
                        ms = get_list(clients[transport], limit, args.vms)
                        if i >= args.warmup:
                            lists[(transport, limit)].append(ms)
            finally:
                for client in clients.values():
                    client.close()

            for transport in ("unix", "tcp"):
                log(f"throughput: {args.clients} clients for {args.seconds:.0f} s over {transport}")
                loads[transport] = throughput(
                    daemon, transport, args.clients, args.seconds, args.vms
                )

            log("where one GET ?limit=100 goes, in-process (the daemon idle)")
            steps = where_it_goes(home, 11)
            log(f"create request: {args.creates} timed after 5 warm-up")
            create_label, creates = time_creates(daemon, args.creates, 5)
    finally:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"corrald REST API with {args.vms} defined VMs, milliseconds"
        f" (2 CPUs shared with other sessions' QEMU guests and test suites: noisy)"
    )
    print(f"{'request':48} {'n':>6} {'p50':>8} {'p99':>8} {'min':>8} {'max':>8}")

    def line(label: str, s: list[float], extra: str = "") -> None:
        if not s:
            print(f"{label:48} {0:6d} {'-':>8}")
            return
        print(
            f"{label:48} {len(s):6d} {statistics.median(s):8.1f} {p(s, 0.99):8.1f}"
            f" {min(s):8.1f} {max(s):8.1f}{extra}"
        )

    for key, label in rows.items():
        line(label, lists[key])
    line(create_label, creates)
    for transport, load in loads.items():
        rate = len(load.latencies) / load.seconds
        label = f"{args.clients} clients, GET ?limit=100, {transport}"
        line(label, load.latencies, f"   {rate:6.1f} req/s")
        if load.errors:
            print(f"  {len(load.errors)} client errors, first: {load.errors[0]}")
    print(
        "(sequential rows: one keep-alive client each, interleaved request by request;"
        f" {args.vms} VMs defined through the Python API in {define_s:.1f} s)"
    )
    print()
    print("where one GET /api/v1/vms?limit=100 goes, its steps called in-process, median of 11:")
    for name, ms in steps.items():
        print(f"  {name:44} {ms:8.1f} ms")

    list_p50 = max(statistics.median(lists[(t, 100)]) for t in ("unix", "tcp"))
    create_p50 = statistics.median(creates) if creates else float("inf")
    list_ok = list_p50 < LIST_TARGET_MS
    create_ok = create_p50 < CREATE_TARGET_MS
    print(
        f"GET /api/v1/vms p50 (worse transport) {list_p50:.1f} ms:"
        f" {'within' if list_ok else 'OVER'} the {LIST_TARGET_MS:.0f} ms target"
    )
    print(
        f"create request p50 {create_p50:.1f} ms ({create_label.split(' (')[0]}):"
        f" {'within' if create_ok else 'OVER'} the {CREATE_TARGET_MS:.0f} ms target"
    )
    return 0 if list_ok and create_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
