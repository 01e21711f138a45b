"""QMP events into the event broker, in-process, with the reference guest: a :class:`Watcher`
started beside a guest that already runs (as a restarted corrald finds it) listens to its
events monitor while corral's own commands go on using the command monitor, publishes what
QEMU says as ``vm.qmp`` events, lets go when QEMU exits, and leaves no thread or socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.events import Broker, Event, Subscription, Watcher
from corral.compute.inventory import info
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.errors import CorralError
from corral.store.models import VmRow

pytestmark = pytest.mark.tcg

VM = "qe"
#: Seconds any one expected event may take (a TCG boot of the reference guest is ~2.5 s).
DEADLINE = 60.0


@pytest.fixture
def ctx() -> Iterator[Corral]:
    """A state directory of its own (no daemon of another test may listen to its VM), with
    one VM cloned from the reference image."""
    root = Path(tempfile.mkdtemp(prefix="qe-", dir="/tmp"))  # short: QEMU's sockets
    c = Corral(Home(root))
    ensure_reference(c)
    create(c, CreateRequest(name=VM, image="reference", memory="128M"))
    try:
        yield c
    finally:
        with contextlib.suppress(CorralError):
            if info(c, VM).state in ("running", "paused", "starting", "stopping"):
                lifecycle.destroy(c, VM)
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def sockets() -> set[str]:
    """This process's open sockets (``socket:[inode]``)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


async def expect(sub: Subscription, wanted: Callable[[Event], bool], what: str) -> Event:
    """The next event ``wanted`` lets through, within :data:`DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            item = await sub.next(max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise AssertionError(f"no {what} within {DEADLINE} s") from None
        if isinstance(item, Event) and wanted(item):
            return item


def qmp(name: str, **details: Any) -> Callable[[Event], bool]:
    """Matches VM :data:`VM`'s QMP event ``name`` whose details include ``details``."""

    def wanted(event: Event) -> bool:
        data = event.data
        return (
            event.kind == "vm.qmp"
            and data["name"] == VM
            and data["event"] == name
            and details.items() <= data["details"].items()
        )

    return wanted


def test_watcher_follows_a_running_guest_and_lets_go(ctx: Corral) -> None:
    lifecycle.start(ctx, VM, wait=True)
    with ctx.db.session() as session:
        project_id = session.scalars(select(VmRow.project_id).where(VmRow.name == VM)).one()
    threads_before = {t.name for t in threading.enumerate()}
    sockets_before = sockets()
    broker = Broker()
    watcher = Watcher(ctx, broker)

    async def scenario() -> None:
        sub, _ = broker.subscribe(lambda e: e.kind in ("vm", "vm.qmp"))
        # A guest already running when the watcher starts: re-adopted, listened to at once.
        await asyncio.to_thread(watcher.start)
        assert watcher.listening == {VM}

        # corral's own commands on the command monitor, while the events monitor is held.
        await asyncio.to_thread(lifecycle.pause, ctx, VM)
        stop = await expect(sub, qmp("STOP"), "STOP")
        assert stop.project_id == project_id
        await expect(sub, lambda e: e.kind == "vm" and e.data["state"] == "paused", "paused")
        await asyncio.to_thread(lifecycle.resume, ctx, VM)
        resume = await expect(sub, qmp("RESUME"), "RESUME")
        assert resume.id > stop.id and resume.data["timestamp"] >= stop.data["timestamp"]

        # Reboot waits for SHUTDOWN and RESET on the command monitor; both monitors see them.
        outcome = await asyncio.to_thread(lifecycle.reboot, ctx, VM)
        assert outcome.detail == "rebooted"
        await expect(sub, qmp("POWERDOWN"), "POWERDOWN")
        await expect(sub, qmp("SHUTDOWN", guest=True, reason="guest-shutdown"), "SHUTDOWN")
        await expect(sub, qmp("RESET", guest=False), "RESET")

        # QEMU told to quit: its last event comes before the end of the connection, and once
        # the VM shows as shut off nothing listens to it any more.
        await asyncio.to_thread(lifecycle.destroy, ctx, VM)
        await expect(sub, qmp("SHUTDOWN", guest=False, reason="host-qmp-quit"), "quit")
        await expect(sub, lambda e: e.kind == "vm" and e.data["state"] == "shutoff", "shutoff")
        assert watcher.listening == frozenset()
        broker.unsubscribe(sub)

    try:
        asyncio.run(scenario())
    finally:
        watcher.stop()
        broker.close()
    assert {t.name for t in threading.enumerate() if t.is_alive()} <= threads_before
    assert sockets() <= sockets_before
