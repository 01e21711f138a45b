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
  the last one it saw, whoever changed it (a task, the CLI, reconciliation).

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
from typing import Any, Literal

from sqlalchemy import select

from corral.compute.context import Corral
from corral.errors import CorralError
from corral.store.models import VmRow

log = logging.getLogger(__name__)

#: Events kept for replay to reconnecting clients.
HISTORY = 1000
#: Events one subscriber may have waiting; beyond that it loses them.
QUEUE_SIZE = 256
#: Seconds between two looks of the :class:`Watcher` at the VMs.
WATCH_INTERVAL = 0.5

Kind = Literal["task", "vm"]


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
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
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


class Watcher:
    """A thread that publishes VM state changes, reconciling VMs whose QEMU has gone.

    :param interval: seconds between two looks.
    """

    def __init__(self, ctx: Corral, broker: Broker, interval: float = WATCH_INTERVAL) -> None:
        self.ctx = ctx
        self.broker = broker
        self.interval = interval
        self._seen: dict[str, _Seen] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vm-watcher", daemon=True)

    def start(self) -> None:
        """Learn the VMs' states (in the caller's thread), then watch them in the thread."""
        self.look()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.look()
            except Exception:  # a bug, or the database away: try again next time
                log.exception("the vm watcher failed")
            self._stop.wait(self.interval)

    def look(self) -> None:
        """Reconcile active VMs whose process is gone; publish each state change since the
        last look (the first look only learns the states)."""
        with self.ctx.db.session() as session:
            rows = list(session.scalars(select(VmRow)))
        for row in rows:
            if row.pid is not None and _gone(row):
                self._reconcile(row.name)
        with self.ctx.db.session() as session:
            now = {
                row.name: (_Seen(row.state, row.project_id), row.reason)
                for row in session.scalars(select(VmRow))
            }
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

    def _reconcile(self, name: str) -> None:
        """Bring ``name``'s record in line with the host, unless a command holds its lock
        (that command reconciles it itself)."""
        from corral.compute import records
        from corral.compute.lifecycle import vm_lock

        lock = vm_lock(self.ctx, name)
        if not lock.try_acquire():
            return
        try:
            with self.ctx.db.session() as session:
                records.reconcile(records.load(self.ctx, session, name), ask_monitor=False)
        except CorralError as exc:
            log.warning("cannot reconcile vm %s: %s", name, exc)
        finally:
            lock.release()


def _gone(row: VmRow) -> bool:
    """Whether the QEMU process recorded for ``row`` has ended."""
    from corral.qemu import process

    if row.pid is None or row.pid_start is None:
        return False
    return not process.is_alive(process.QemuProcess(row.pid, row.pid_start))
