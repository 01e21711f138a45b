"""Events: what changed, as it happens: task updates and VM state changes.

A :class:`Broker` takes events from any thread (:meth:`Broker.publish`) and hands them to
asynchronous subscribers, each with a bounded queue. Publishing never blocks: a subscriber
that falls behind loses events and is told so with a ``lost`` notice (the events stay in the
broker's bounded history, from where a reconnecting client gets them with ``Last-Event-ID``).

What feeds it:

- task updates: :mod:`corral.compute.tasks` calls its listeners at each status or progress
  change (:meth:`Broker.attach_tasks`);
- VM state changes: a :class:`Watcher` thread looks at the VM records every
  :data:`WATCH_INTERVAL` seconds, reconciles an active VM whose QEMU process has gone
  (guest power-off, crash, kill), and publishes each VM whose recorded state differs from
  the last one it saw, whoever changed it (a task, the CLI, reconciliation);
- QMP events: the watcher keeps a listener on the events monitor of each running QEMU
  (:mod:`corral.qemu.listener`; attached when it sees a VM running, so also to the guests
  a restarted daemon re-adopts) and publishes each of :data:`~corral.qemu.monitor.VM_EVENTS`
  as a ``vm.qmp`` event at once. An event does not change a record by itself: it makes the
  watcher look now, and for one that changes the run state (``STOP``, ``RESUME``, ...) ask
  QEMU's run state while reconciling, so the recorded state follows promptly, with the
  records staying the truth. A VM whose QEMU has no events monitor (started by an older
  corral) is watched through its process only.

An event's id grows monotonically, across daemon restarts too (each broker starts counting
at its start time in microseconds), so that a stale ``Last-Event-ID`` is recognised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from corral.compute.context import Corral
from corral.errors import CorralError
from corral.store.models import VmRow

if TYPE_CHECKING:
    from corral.qemu.listener import QmpEvent

log = logging.getLogger(__name__)

#: Events kept for replay to reconnecting clients.
HISTORY = 1000
#: Events one subscriber may have waiting; beyond that it loses them.
QUEUE_SIZE = 256
#: Seconds between two looks of the :class:`Watcher` at the VMs.
WATCH_INTERVAL = 0.5
#: Seconds before the watcher tries again to listen to a running VM's events monitor.
LISTEN_RETRY = 5.0
#: QMP events after which the watcher asks QEMU's run state when it reconciles the VM.
_RUN_STATE_EVENTS = frozenset({"STOP", "RESUME", "SUSPEND", "WAKEUP", "GUEST_PANICKED"})

Kind = Literal["task", "vm", "vm.qmp"]


@dataclass(frozen=True)
class Event:
    """One change."""

    #: Greater than every earlier event's.
    id: int
    #: When it was published (ISO 8601, UTC).
    at: str
    kind: Kind
    #: The project of the object it is about (who may see it); ``None``: admins only.
    project_id: str | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Lost:
    """A subscriber's notice that it missed events.

    :param count: how many were dropped (``None``: unknown, before the history began).
    :param after: the last event id it received before the gap.
    """

    count: int | None
    after: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "after": self.after}


class Subscription:
    """One subscriber's queue; read it with :meth:`next` in the event loop it was made in.

    :param accept: which events it wants (its caller's projects).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        accept: Callable[[Event], bool],
        size: int,
    ) -> None:
        self._loop = loop
        self._accept = accept
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=size)
        #: Events dropped since the last :class:`Lost` notice (touched in the loop only).
        self._dropped = 0
        self._last_id: int | None = None
        self._closed = False
        self._end_pending = False

    def _offer(self, event: Event | None) -> None:
        """In the loop: queue ``event`` (``None``: the end), or count it lost."""
        if self._closed:
            return
        if event is None:
            self._closed = True
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                self._end_pending = True  # told once the queue is read
            return
        if not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1

    def deliver(self, event: Event | None) -> None:
        """From any thread: hand ``event`` to the subscriber's loop."""
        with contextlib.suppress(RuntimeError):  # its loop has closed
            self._loop.call_soon_threadsafe(self._offer, event)

    async def next(self, timeout: float) -> Event | Lost | None:
        """The next event, a :class:`Lost` notice, or ``None`` at the end.

        :raise TimeoutError: nothing came within ``timeout`` seconds.
        """
        if self._queue.empty():
            if self._dropped:
                lost = Lost(self._dropped, self._last_id)
                self._dropped = 0
                return lost
            if self._end_pending:
                return None
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is not None:
            self._last_id = item.id
        return item


class Broker:
    """Where events are published and subscribed to.

    :param history: events kept for replay.
    :param queue_size: events one subscriber may have waiting.
    """

    def __init__(self, history: int = HISTORY, queue_size: int = QUEUE_SIZE) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(time.time_ns() // 1000)
        #: The first id this broker gives.
        self.first_id = next(self._ids)
        self._history: deque[Event] = deque(maxlen=history)
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self._ctx: Corral | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, kind: Kind, project_id: str | None, data: dict[str, Any]) -> Event | None:
        """Record an event and hand it to every subscriber (any thread; never blocks).

        :return: the event, or ``None`` once the broker is closed.
        """
        with self._lock:
            if self._closed:
                return None
            event = Event(
                id=next(self._ids),
                at=datetime.now(UTC).isoformat(),
                kind=kind,
                project_id=project_id,
                data=data,
            )
            self._history.append(event)
            # Handed on under the lock (it never blocks), so that events published at once
            # by several threads reach every subscriber in the order of their ids.
            for subscriber in self._subscribers:
                subscriber.deliver(event)
        return event

    def subscribe(
        self, accept: Callable[[Event], bool], after: int | None = None
    ) -> tuple[Subscription, list[Event | Lost]]:
        """Subscribe, from inside the event loop that will read the subscription.

        :param accept: which events the subscriber may see.
        :param after: the last event id the subscriber received (``Last-Event-ID``): the
            later ones still in the history come first, after a :class:`Lost` notice if
            some are no longer there.
        :return: the subscription and what to send before its first event.
        """
        subscription = Subscription(asyncio.get_running_loop(), accept, self._queue_size)
        replay: list[Event | Lost] = []
        with self._lock:
            if self._closed:
                subscription._offer(None)
                return subscription, replay
            self._subscribers.add(subscription)
            if after is not None:
                replay = self._since(accept, after)
        return subscription, replay

    def since(self, accept: Callable[[Event], bool], after: int | None) -> list[Event | Lost]:
        """The held events after ``after`` (all when ``None``) that ``accept`` lets through,
        after a :class:`Lost` notice if some of them are no longer held."""
        with self._lock:
            return self._since(accept, after)

    def _since(self, accept: Callable[[Event], bool], after: int | None) -> list[Event | Lost]:
        held: list[Event | Lost] = []
        oldest = self._history[0].id if self._history else self.first_id
        if after is not None and after < oldest - 1:
            held.append(Lost(None, after))
        start = -1 if after is None else after
        held.extend(e for e in self._history if e.id > start and accept(e))
        return held

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def attach_tasks(self, ctx: Corral) -> None:
        """Publish every change of ``ctx``'s tasks."""
        from corral.compute import tasks

        self._ctx = ctx
        tasks.listeners.append(self._task_changed)

    def _task_changed(self, ctx: Corral, task: Any) -> None:
        if ctx is not self._ctx:
            return
        data = dataclasses.asdict(task)
        data.pop("project_id", None)
        self.publish("task", task.project_id, data)

    def close(self) -> None:
        """End every subscription; later publishing does nothing."""
        from corral.compute import tasks

        with contextlib.suppress(ValueError):
            tasks.listeners.remove(self._task_changed)
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for subscriber in subscribers:
            subscriber.deliver(None)


def sse(item: Event | Lost) -> str:
    """``item`` as one Server-Sent Events message (a :class:`Lost` notice carries no id, so a
    client's ``Last-Event-ID`` stays at the last event it received)."""
    if isinstance(item, Lost):
        return f"event: lost\ndata: {json.dumps(item.as_dict())}\n\n"
    body = json.dumps(item.as_dict(), separators=(",", ":"))
    return f"id: {item.id}\nevent: {item.kind}\ndata: {body}\n\n"


@dataclass(frozen=True)
class _Seen:
    state: str
    project_id: str
    #: The recorded QEMU process (PID, start ticks) while the VM is active.
    process: tuple[int, int] | None = None


@dataclass
class _Feed:
    """A running VM's events monitor as the watcher follows it."""

    #: The QEMU process it belongs to (PID, start ticks).
    process: tuple[int, int]
    project_id: str
    #: Whether a listener is connected to it.
    attached: bool = False
    #: When to try again to connect (``time.monotonic()``) while it is not.
    retry_at: float = 0.0


class Watcher:
    """A thread that publishes VM state changes and QMP events, reconciling VMs whose QEMU
    has gone.

    :param interval: seconds between two looks.
    """

    def __init__(self, ctx: Corral, broker: Broker, interval: float = WATCH_INTERVAL) -> None:
        from corral.qemu.listener import EventListeners
        from corral.qemu.monitor import VM_EVENTS

        self.ctx = ctx
        self.broker = broker
        self.interval = interval
        self._seen: dict[str, _Seen] | None = None
        self._stop = threading.Event()
        #: Set to look now rather than at the end of the interval.
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vm-watcher", daemon=True)
        self._listeners = EventListeners(self._qmp_event, self._qmp_ended, VM_EVENTS)
        #: Guarded by ``_lock``: the listeners' thread reads them too.
        self._lock = threading.Lock()
        self._feeds: dict[str, _Feed] = {}
        #: VMs whose run state QEMU is to be asked at the next look.
        self._ask: set[str] = set()

    @property
    def listening(self) -> frozenset[str]:
        """The VMs whose events monitor is listened to now."""
        return self._listeners.keys()

    def start(self) -> None:
        """Learn the VMs' states and listen to the running ones (in the caller's thread),
        then watch them in the thread."""
        self.look()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread and every QMP listener."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._listeners.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.look()
            except Exception:  # a bug, or the database away: try again next time
                log.exception("the vm watcher failed")
            self._wake.wait(self.interval)

    def look(self) -> None:
        """Reconcile active VMs whose process is gone (and those whose QMP events say their
        run state changed); follow the running VMs' events monitors; publish each state
        change since the last look (the first look only learns the states)."""
        with self.ctx.db.session() as session:
            rows = list(session.scalars(select(VmRow)))
        for row in rows:
            if row.pid is not None and _gone(row):
                self._reconcile(row.name)
        with self._lock:
            ask, self._ask = self._ask, set()
        for name in sorted(ask):
            self._reconcile(name, ask_monitor=True)
        with self.ctx.db.session() as session:
            now = {
                row.name: (_Seen(row.state, row.project_id, _process(row)), row.reason)
                for row in session.scalars(select(VmRow))
            }
        self._follow({name: seen for name, (seen, _) in now.items()})
        before, self._seen = self._seen, {name: seen for name, (seen, _) in now.items()}
        if before is None:
            return
        for name, (seen, reason) in sorted(now.items()):
            old = before.get(name)
            if old is None or old.state != seen.state:
                self.broker.publish(
                    "vm",
                    seen.project_id,
                    {
                        "name": name,
                        "state": seen.state,
                        "previous": old.state if old else None,
                        "reason": reason,
                    },
                )
        for name in sorted(before.keys() - now.keys()):
            old = before[name]
            self.broker.publish(
                "vm",
                old.project_id,
                {"name": name, "state": "deleted", "previous": old.state, "reason": None},
            )

    def _follow(self, now: dict[str, _Seen]) -> None:
        """Listen to the events monitor of each VM whose QEMU is recorded (once per QEMU
        process, again after :data:`LISTEN_RETRY` if it did not answer), and stop listening
        to the others. Done before the look publishes, so that once a ``running`` VM event is
        out, the VM's QMP events are too."""
        from corral.qemu.paths import VmPaths

        clock = time.monotonic()
        for name, seen in sorted(now.items()):
            if seen.process is None:
                if name in self._feeds:
                    self._unfollow(name)
                continue
            with self._lock:
                feed = self._feeds.get(name)
                if feed is not None and feed.process == seen.process:
                    feed.project_id = seen.project_id
                    if feed.attached or clock < feed.retry_at:
                        continue
                feed = self._feeds[name] = _Feed(seen.process, seen.project_id)
            socket_path = VmPaths.for_dir(str(self.ctx.home.vm_dir(name))).events_socket
            attached = self._listeners.attach(name, socket_path)
            with self._lock:
                feed.attached = attached
                feed.retry_at = time.monotonic() + LISTEN_RETRY
        for name in sorted(self._feeds.keys() - now.keys()):
            self._unfollow(name)

    def _unfollow(self, name: str) -> None:
        with self._lock:
            self._feeds.pop(name, None)
        self._listeners.detach(name)

    def _qmp_event(self, name: str, event: QmpEvent) -> None:
        """In the listeners' thread: publish ``event`` of VM ``name``; look now."""
        with self._lock:
            feed = self._feeds.get(name)
            if event.name in _RUN_STATE_EVENTS:
                self._ask.add(name)
        self.broker.publish(
            "vm.qmp",
            feed.project_id if feed else None,
            {
                "name": name,
                "event": event.name,
                "timestamp": event.timestamp,
                "details": event.data,
            },
        )
        self._wake.set()

    def _qmp_ended(self, name: str) -> None:
        """In the listeners' thread: QEMU closed ``name``'s events monitor (it is exiting)."""
        with self._lock:
            feed = self._feeds.get(name)
            if feed is not None:
                feed.attached = False
                feed.retry_at = time.monotonic() + LISTEN_RETRY
        self._wake.set()

    def _reconcile(self, name: str, ask_monitor: bool = False) -> None:
        """Bring ``name``'s record in line with the host, unless a command holds its lock
        (that command reconciles it itself).

        :param ask_monitor: also ask QEMU's run state over the command monitor.
        """
        from corral.compute import records
        from corral.compute.lifecycle import vm_lock

        lock = vm_lock(self.ctx, name)
        if not lock.try_acquire():
            return
        try:
            with self.ctx.db.session() as session:
                records.reconcile(records.load(self.ctx, session, name), ask_monitor=ask_monitor)
        except CorralError as exc:
            log.warning("cannot reconcile vm %s: %s", name, exc)
        finally:
            lock.release()


def _process(row: VmRow) -> tuple[int, int] | None:
    """The QEMU process recorded for an active VM."""
    if row.pid is None or row.pid_start is None:
        return None
    return (row.pid, row.pid_start)


def _gone(row: VmRow) -> bool:
    """Whether the QEMU process recorded for ``row`` has ended."""
    from corral.qemu import process

    if row.pid is None or row.pid_start is None:
        return False
    return not process.is_alive(process.QemuProcess(row.pid, row.pid_start))
