"""Listening to QEMU's events monitors: many VMs at once, on one thread of their own.

Each VM's QEMU has a second QMP monitor that is only listened to (:mod:`corral.qemu.argv`),
so a listener never keeps a command waiting for the command monitor. :class:`EventListeners`
keeps one ``qemu.qmp`` client connected to each such socket, on an event loop in a thread that
it starts when the first is attached, and hands on every event whose name it was asked for.

A connection ends when QEMU closes it (QEMU exits), when it is detached, or when the
listeners are closed; the thread ends with :meth:`EventListeners.close`. Events that arrived
before the end are handed on first, so a guest's last ``SHUTDOWN`` is never lost to its EOF.

The callbacks run in the listeners' thread: they must be quick, and must not call the
listeners (they would wait for the very thread they run in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds allowed to connect to an events monitor and negotiate.
CONNECT_TIMEOUT = 3.0
#: Seconds allowed to the thread to end once every connection is closed.
CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class QmpEvent:
    """One event as QEMU sent it."""

    #: Its name (``STOP``, ``SHUTDOWN``, ...).
    name: str
    #: When QEMU emitted it, by the host's clock (ISO 8601, UTC).
    timestamp: str
    #: Its ``data`` member (empty when it has none).
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> QmpEvent:
        """The event a QMP event message describes.

        :param message: ``{"event": ..., "timestamp": {"seconds", "microseconds"}, "data"}``.
        """
        stamp = message.get("timestamp") or {}
        seconds = int(stamp.get("seconds", 0)) + int(stamp.get("microseconds", 0)) / 1e6
        return cls(
            name=str(message["event"]),
            timestamp=datetime.fromtimestamp(seconds, UTC).isoformat(),
            data=dict(message.get("data") or {}),
        )


class _Connection:
    """One connected events monitor, followed by a task of the listeners' loop."""

    def __init__(self, key: str, client: Any) -> None:
        self.key = key
        #: The ``qemu.qmp`` client.
        self.client = client
        self.task: asyncio.Task[None] | None = None
        #: Set to end it from this side.
        self.stop = asyncio.Event()
        #: Whether this side ended it (then nobody is told that it ended).
        self.detached = False


class EventListeners:
    """Connections to events monitors, each under a key (corrald uses the VM's name).

    :param on_event: called with the key and each event whose name is in ``names``.
    :param on_end: called with the key when QEMU ended a connection (not after
        :meth:`detach` or :meth:`close`).
    :param names: the event names handed on.
    :param timeout: seconds allowed to connect and negotiate.
    """

    def __init__(
        self,
        on_event: Callable[[str, QmpEvent], None],
        on_end: Callable[[str], None],
        names: Collection[str],
        timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._on_event = on_event
        self._on_end = on_end
        self._names = frozenset(names)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        #: By key; changed in the loop's thread only, under the lock.
        self._connections: dict[str, _Connection] = {}

    def keys(self) -> frozenset[str]:
        """The keys connected now."""
        with self._lock:
            return frozenset(self._connections)

    def attach(self, key: str, socket_path: str) -> bool:
        """Connect to the events monitor at ``socket_path`` under ``key``, after ending the
        key's earlier connection if it has one; return once connected.

        :return: whether it is connected: ``False`` when nothing listens there (a QEMU
            started without an events monitor, a QEMU that has gone) or nothing answers in
            time (another client holds the monitor).
        :raise RuntimeError: the listeners are closed, or this is called from a callback.
        """
        if not Path(socket_path).exists():
            self.detach(key)
            return False
        return self._call(self._attach(key, socket_path))

    def detach(self, key: str) -> None:
        """End ``key``'s connection, if it has one, and wait until it has ended.

        :raise RuntimeError: called from a callback.
        """
        with self._lock:
            if key not in self._connections:
                return
        self._call(self._detach(key))

    def close(self) -> None:
        """End every connection and the thread (idempotent); later attaching fails."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._detach_all(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    # -- the loop's side ---------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the listeners' loop (started on first use) and wait for it."""
        with self._lock:
            if threading.current_thread() is self._thread:
                coro.close()
                raise RuntimeError("QMP event listeners called from their own thread")
            if self._closed:
                coro.close()
                raise RuntimeError("the QMP event listeners are closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="qmp-events", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def _attach(self, key: str, socket_path: str) -> bool:
        from qemu.qmp import QMPClient

        await self._detach(key)
        client = QMPClient(f"corral-events:{key}")
        try:
            await asyncio.wait_for(client.connect(socket_path), self.timeout)
        except Exception as exc:  # OSError, timeouts and qemu.qmp's ConnectError alike
            log.info("no QMP events for %s from %s: %s", key, socket_path, exc)
            return False
        connection = _Connection(key, client)
        with self._lock:
            closed = self._closed
            if not closed:
                self._connections[key] = connection
        connection.task = asyncio.create_task(self._follow(connection), name=f"qmp-events:{key}")
        if closed:
            await self._detach(key, connection)
            return False
        return True

    async def _detach(self, key: str, connection: _Connection | None = None) -> None:
        with self._lock:
            found = self._connections.pop(key, None)
        connection = connection or found
        if connection is None or connection.task is None:
            return
        connection.detached = True
        connection.stop.set()
        await asyncio.wait({connection.task})

    async def _detach_all(self) -> None:
        with self._lock:
            keys = list(self._connections)
        await asyncio.gather(*(self._detach(key) for key in keys))

    async def _follow(self, connection: _Connection) -> None:
        """Hand on the connection's events until QEMU or this side ends it; then clean up."""
        client = connection.client
        waits = {
            asyncio.create_task(self._pump(connection)),
            asyncio.create_task(_hung_up(client)),
            asyncio.create_task(connection.stop.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.wait(waits)
            for message in client.events.clear():
                self._deliver(connection.key, message)
            # After QEMU hung up, disconnect() re-raises the reader's EOFError: expected.
            with contextlib.suppress(Exception):
                await client.disconnect()
            with self._lock:
                if self._connections.get(connection.key) is connection:
                    del self._connections[connection.key]
        if not connection.detached:
            try:
                self._on_end(connection.key)
            except Exception:
                log.exception("the end of %s's QMP events was not handled", connection.key)

    async def _pump(self, connection: _Connection) -> None:
        while True:
            self._deliver(connection.key, await connection.client.events.get())

    def _deliver(self, key: str, message: Mapping[str, Any]) -> None:
        if message.get("event") not in self._names:
            return
        try:
            self._on_event(key, QmpEvent.from_message(message))
        except Exception:
            log.exception("QMP event %s of %s was not handled", message.get("event"), key)


async def _hung_up(client: Any) -> None:
    """Return once ``client`` is no longer connected (QEMU closed the socket)."""
    from qemu.qmp import Runstate

    while client.runstate is Runstate.RUNNING:
        await client.runstate_changed()
