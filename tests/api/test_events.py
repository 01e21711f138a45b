"""``/api/v1/events`` against the real daemon (``corral serve --detach``), with real QEMU: a
VM started and paused through the API, destroyed by the CLI behind the API's back and killed
outright shows up as task and VM events; another project's user sees none of them; the held
events replay after ``Last-Event-ID``; a slow subscriber is told it lost events. QEMU's own
events come as ``vm.qmp`` events: STOP and RESUME of a pause through the API (to a daemon
restarted while the guest runs), RESET of a reset through the command monitor and of the
guest's own reboot, SHUTDOWN of the guest's power-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.events import Broker, Event, Lost, Subscription
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.qemu.monitor import Monitor
from tests.integration.conftest import GuestShell

CORRAL = str(Path(sys.executable).with_name("corral"))
API = "/api/v1"
#: Seconds any one expected event may take (a TCG boot of the reference guest is ~2.5 s).
DEADLINE = 60.0
SSE = {"Accept": "text/event-stream"}


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [CORRAL, *args],
        env=dict(os.environ, CORRAL_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, (args, done.stderr)
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Daemon:
    home: Path
    tcp: str
    #: A token of an operator of another project than the VM's.
    other_token: str


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A real corrald on its UNIX socket and a TCP port, one VM defined, one other user."""
    home = Path(tempfile.mkdtemp(prefix="ev-", dir="/tmp"))  # short: QEMU's sockets
    ctx = Corral(Home(home))
    ensure_reference(ctx)
    create(ctx, CreateRequest(name="ev-vm", image="reference", memory="128M"))
    create(ctx, CreateRequest(name="ev-qmp", image="reference", memory="128M"))
    ctx.close()
    port = free_port()
    # First: the CLI verbs below would start a daemon of their own (UNIX socket only).
    run(home, "serve", "--bind", f"127.0.0.1:{port}", "--detach")
    try:
        run(home, "project", "create", "other")
        made = run(home, "user", "create", "bob", "--role", "operator", "--project", "other",
                   "--token")  # fmt: skip
        token = next(w for w in made.stdout.split() if w.startswith("crl_"))
        yield Daemon(home, f"http://127.0.0.1:{port}", token)
    finally:
        for vm in ("ev-vm", "ev-qmp"):
            with contextlib.suppress(AssertionError):
                run(home, "destroy", vm)
        run(home, "serve", "--stop")
        shutil.rmtree(home, ignore_errors=True)


class Stream:
    """One SSE subscription: messages parsed as they come, each awaited with a deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        #: Every message received so far: (event, id, data).
        self.seen: list[tuple[str, str | None, Any]] = []

    async def message(self, deadline: float) -> tuple[str, str | None, Any]:
        """The next message (comments skipped).

        :raise TimeoutError: none before ``deadline`` (``time.monotonic()``).
        """
        fields: dict[str, str] = {}
        while True:
            remaining = deadline - time.monotonic()
            line = await asyncio.wait_for(self._lines.__anext__(), max(remaining, 0.001))
            if line.startswith(":"):
                continue
            if line == "":
                if fields:
                    item = (fields["event"], fields.get("id"), json.loads(fields["data"]))
                    self.seen.append(item)
                    return item
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    def mark(self) -> int:
        """Where the messages after now begin (for :meth:`until`)."""
        return len(self.seen)

    async def until(self, wanted: Callable[[str, Any], bool], what: str, since: int) -> Any:
        """The data of the first message from ``since`` on that matches ``wanted(event,
        data)``, reading more as needed."""
        deadline = time.monotonic() + DEADLINE
        index = since
        while True:
            while index < len(self.seen):
                event, _, envelope = self.seen[index]
                index += 1
                if wanted(event, envelope["data"]):
                    return envelope["data"]
            try:
                await self.message(deadline)
            except TimeoutError:
                raise AssertionError(f"no {what} within {DEADLINE}s; saw {self.seen}") from None


@contextlib.asynccontextmanager
async def subscribe(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    async with client.stream("GET", f"{API}/events", headers={**SSE, **(headers or {})}) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        yield Stream(r)


def unix_client(home: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(home / "corrald.sock"))
    timeout = httpx.Timeout(10.0, read=None)
    return httpx.AsyncClient(transport=transport, base_url="http://corrald", timeout=timeout)


def vm_state(name: str, state: str) -> Callable[[str, Any], bool]:
    return lambda event, data: event == "vm" and data["name"] == name and data["state"] == state


def qmp_event(name: str, qmp: str, **details: Any) -> Callable[[str, Any], bool]:
    """Matches VM ``name``'s QMP event ``qmp`` whose details include ``details``."""
    return lambda event, data: (
        event == "vm.qmp"
        and data["name"] == name
        and data["event"] == qmp
        and details.items() <= data["details"].items()
    )


async def task_statuses(stream: Stream, task_id: str, since: int) -> list[str]:
    """The statuses ``task_id``'s events went through, up to a final one."""
    statuses: list[str] = []
    index = since
    while not statuses or statuses[-1] not in ("success", "error", "cancelled"):
        await stream.until(lambda event, d: event == "task" and d["id"] == task_id, task_id, index)
        index = len(stream.seen)
        status = stream.seen[-1][2]["data"]["status"]
        if not statuses or statuses[-1] != status:
            statuses.append(status)
    return statuses


def test_task_and_vm_events(daemon: Daemon) -> None:
    async def scenario() -> None:
        bearer = {"Authorization": f"Bearer {daemon.other_token}"}
        async with (
            unix_client(daemon.home) as admin,
            httpx.AsyncClient(base_url=daemon.tcp, timeout=httpx.Timeout(10.0, read=None)) as tcp,
            subscribe(admin) as stream,
            subscribe(tcp, bearer) as others,
        ):
            mark = stream.mark()
            started = await admin.post(f"{API}/vms/ev-vm/start", json={"wait": True})
            assert started.status_code == 202, started.text
            task_id = started.json()["id"]
            statuses = await task_statuses(stream, task_id, mark)
            assert statuses == ["queued", "running", "success"]
            await stream.until(vm_state("ev-vm", "running"), "vm running", mark)

            mark = stream.mark()
            paused = await admin.post(f"{API}/vms/ev-vm/pause")
            assert paused.status_code == 202, paused.text
            statuses = await task_statuses(stream, paused.json()["id"], mark)
            assert statuses[-1] == "success"
            data = await stream.until(vm_state("ev-vm", "paused"), "vm paused", mark)
            assert data["previous"] == "running"

            # Behind the API's back: only the watcher can tell.
            mark = stream.mark()
            await asyncio.to_thread(run, daemon.home, "destroy", "ev-vm")
            await stream.until(vm_state("ev-vm", "shutoff"), "vm shutoff (CLI destroy)", mark)

            # QEMU killed outright: the watcher reconciles the record.
            mark = stream.mark()
            again = await admin.post(f"{API}/vms/ev-vm/start", json={"wait": True})
            statuses = await task_statuses(stream, again.json()["id"], mark)
            assert statuses[-1] == "success"
            await stream.until(vm_state("ev-vm", "running"), "vm running again", mark)
            pid = (await admin.get(f"{API}/vms/ev-vm")).json()["pid"]
            mark = stream.mark()
            os.kill(pid, signal.SIGKILL)
            data = await stream.until(vm_state("ev-vm", "crashed"), "vm crashed", mark)
            assert "SIGKILL" in data["reason"], data

            # Every event has the envelope; ids grow.
            ids = [int(i) for _, i, _ in stream.seen if i is not None]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            for _, _, envelope in stream.seen:
                assert set(envelope) == {"id", "at", "kind", "project_id", "data"}

            # Another project's user: its stream is open, its poll holds nothing of ours.
            held = (await tcp.get(f"{API}/events", headers=bearer)).json()
            assert held["items"] == [] and held["lost"] is False
            assert others.seen == []
            with pytest.raises(TimeoutError):
                await others.message(time.monotonic() + 0.2)

            # The admin's poll replays what the stream showed, after Last-Event-ID.
            first = ids[0]
            polled = await admin.get(f"{API}/events", headers={"Last-Event-ID": str(first)})
            assert [e["id"] for e in polled.json()["items"]][: len(ids) - 1] == ids[1:]
            resumed = await admin.get(f"{API}/events", headers={"Last-Event-ID": str(ids[-1])})
            assert all(e["id"] > ids[-1] for e in resumed.json()["items"])

    asyncio.run(scenario())


def test_qmp_events(daemon: Daemon) -> None:
    vm = "ev-qmp"
    bearer = {"Authorization": f"Bearer {daemon.other_token}"}
    ctx = Corral(Home(daemon.home))
    shell = GuestShell(ctx, vm)
    ctx.close()
    qmp_socket = str(Home(daemon.home).vm_dir(vm) / "qmp.sock")

    async def before_restart() -> None:
        async with unix_client(daemon.home) as admin, subscribe(admin) as stream:
            mark = stream.mark()
            started = await admin.post(f"{API}/vms/{vm}/start", json={"wait": True})
            assert started.status_code == 202, started.text
            assert (await task_statuses(stream, started.json()["id"], mark))[-1] == "success"
            await stream.until(vm_state(vm, "running"), "vm running", mark)

    async def after_restart() -> None:
        async with (
            unix_client(daemon.home) as admin,
            httpx.AsyncClient(base_url=daemon.tcp, timeout=httpx.Timeout(10.0, read=None)) as tcp,
            subscribe(admin) as stream,
        ):
            # Pause and resume through the API: QEMU says STOP and RESUME, then the records.
            mark = stream.mark()
            assert (await admin.post(f"{API}/vms/{vm}/pause")).status_code == 202
            stop = await stream.until(qmp_event(vm, "STOP"), "STOP", mark)
            await stream.until(vm_state(vm, "paused"), "vm paused", mark)
            assert (await admin.post(f"{API}/vms/{vm}/resume")).status_code == 202
            resume = await stream.until(qmp_event(vm, "RESUME"), "RESUME", mark)
            await stream.until(vm_state(vm, "running"), "vm running", mark)
            assert resume["timestamp"] >= stop["timestamp"]

            # A command on the command monitor while corrald listens on the events monitor.
            mark = stream.mark()
            booted = shell.log.read_text(errors="replace").count("corral-ready")
            await asyncio.to_thread(reset_through_monitor, qmp_socket)
            await stream.until(qmp_event(vm, "RESET", guest=False), "RESET (QMP)", mark)
            await asyncio.to_thread(ready_again, shell, booted + 1)

            # The guest resets itself, then powers itself off.
            mark = stream.mark()
            booted = shell.log.read_text(errors="replace").count("corral-ready")
            await asyncio.to_thread(shell.run, "(sleep 0.2; reboot -f) & true")
            await stream.until(qmp_event(vm, "RESET", guest=True), "RESET (guest)", mark)
            await asyncio.to_thread(ready_again, shell, booted + 1)
            mark = stream.mark()
            await asyncio.to_thread(shell.run, "(sleep 0.2; poweroff -f) & true")
            await stream.until(qmp_event(vm, "SHUTDOWN", guest=True), "SHUTDOWN", mark)
            off = await stream.until(vm_state(vm, "shutoff"), "vm shutoff", mark)
            assert off["reason"] == "guest powered off"

            # The poll holds them too; another project's user sees none of them.
            polled = (await admin.get(f"{API}/events")).json()["items"]
            seen = [e["data"]["event"] for e in polled if e["kind"] == "vm.qmp"]
            assert {"STOP", "RESUME", "RESET", "SHUTDOWN"} <= set(seen), seen
            others = (await tcp.get(f"{API}/events", headers=bearer)).json()["items"]
            assert [e for e in others if e["kind"] == "vm.qmp"] == []

    asyncio.run(before_restart())
    # The guest outlives its daemon; the next daemon listens to it from its start.
    run(daemon.home, "serve", "--stop")
    run(daemon.home, "serve", "--bind", daemon.tcp.removeprefix("http://"), "--detach")
    asyncio.run(after_restart())


def ready_again(shell: GuestShell, count: int, deadline: float = 60.0) -> None:
    """Wait until the guest's console shows its ready marker ``count`` times: its shell
    reads what is typed again after a reboot."""
    import time

    end = time.monotonic() + deadline
    while shell.log.read_text(errors="replace").count("corral-ready") < count:
        assert time.monotonic() < end, "the guest did not come back after its reboot"
        time.sleep(0.05)


def reset_through_monitor(qmp_socket: str) -> None:
    with Monitor(qmp_socket) as mon:
        mon.system_reset()


def test_unauthenticated_and_bad_last_event_id(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.tcp, timeout=10.0) as tcp:
        assert tcp.get(f"{API}/events", headers=SSE).status_code == 401
    transport = httpx.HTTPTransport(uds=str(daemon.home / "corrald.sock"))
    with httpx.Client(transport=transport, base_url="http://corrald", timeout=10.0) as client:
        answer = client.get(f"{API}/events", headers={"Last-Event-ID": "x"})
        assert answer.status_code == 422 and answer.json()["field"] == "Last-Event-ID"


# The broker alone: bounded queues, lost notices, history and replay.


def test_slow_subscriber_is_told_what_it_lost() -> None:
    async def scenario() -> None:
        broker = Broker(history=10, queue_size=3)
        sub, replay = broker.subscribe(lambda e: e.project_id == "p")
        assert replay == []
        published = [broker.publish("vm", "p" if i % 2 == 0 else "q", {"i": i}) for i in range(10)]
        await asyncio.sleep(0)  # the loop runs the deliveries queued from "other threads"
        got = [await sub.next(1.0) for _ in range(4)]
        assert [g.data["i"] for g in got[:3] if isinstance(g, Event)] == [0, 2, 4]
        assert got[3] == Lost(2, published[4].id if published[4] else None)
        # Replay after the last one received: the lost ones, still held.
        _, again = broker.subscribe(lambda e: e.project_id == "p", after=got[2].id)  # type: ignore[union-attr]
        assert [e.data["i"] for e in again if isinstance(e, Event)] == [6, 8]
        # Too old an id: a lost notice of unknown size first.
        broker.publish("vm", "p", {"i": 10})
        _, stale = broker.subscribe(lambda e: True, after=broker.first_id - 5)
        assert stale[0] == Lost(None, broker.first_id - 5)
        broker.close()
        assert broker.publish("vm", "p", {}) is None

    asyncio.run(scenario())


def test_close_ends_a_full_subscription() -> None:
    async def scenario() -> None:
        broker = Broker(queue_size=1)
        sub, _ = broker.subscribe(lambda e: True)
        first = broker.publish("task", None, {})
        broker.publish("task", None, {})
        broker.close()
        await asyncio.sleep(0)
        items = [await sub.next(1.0) for _ in range(3)]
        assert first is not None
        assert items == [first, Lost(1, first.id), None]

    asyncio.run(scenario())


def test_events_from_several_threads_arrive_in_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Task threads, the watcher and the QMP listeners publish at once; a subscriber still
    gets the events in the order of their ids, however slowly each is handed on."""
    deliver = Subscription.deliver

    def slow_deliver(self: Subscription, event: Event | None) -> None:
        time.sleep(0.0001)  # lets another publishing thread run in between
        deliver(self, event)

    monkeypatch.setattr(Subscription, "deliver", slow_deliver)

    async def scenario() -> None:
        broker = Broker(queue_size=1000)
        sub, _ = broker.subscribe(lambda e: True)
        start = threading.Barrier(4)

        def publish(thread: int) -> None:
            start.wait()
            for i in range(100):
                broker.publish("vm", None, {"thread": thread, "i": i})

        await asyncio.gather(*(asyncio.to_thread(publish, t) for t in range(4)))
        got = [await sub.next(1.0) for _ in range(400)]
        ids = [e.id for e in got if isinstance(e, Event)]
        assert len(ids) == 400
        assert ids == sorted(ids)
        broker.close()

    asyncio.run(scenario())
