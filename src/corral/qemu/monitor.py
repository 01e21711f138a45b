"""The QMP vocabulary corral speaks, over the ``qemu.qmp`` protocol library.

``qemu.qmp`` is the transport (asyncio); this module is the vocabulary: one method per QMP
command corral uses, each raising :class:`~corral.errors.MonitorError` with what was sent and
QEMU's error class. :class:`Monitor` is a synchronous facade for command-line use; it owns a
private event loop for the life of one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Literal, TypeVar

from corral.errors import MonitorError

T = TypeVar("T")

#: QEMU run states as ``query-status`` reports them.
RunState = str

#: The QMP events that tell what happened to a machine as a whole: power, run state, resets,
#: crashes, devices leaving, disk errors. (Others, such as ``RTC_CHANGE`` or job progress, are
#: chatter for this purpose.)
VM_EVENTS = frozenset(
    {
        "SHUTDOWN",
        "POWERDOWN",
        "RESET",
        "STOP",
        "RESUME",
        "SUSPEND",
        "SUSPEND_DISK",
        "WAKEUP",
        "GUEST_PANICKED",
        "GUEST_CRASHLOADED",
        "WATCHDOG",
        "DEVICE_DELETED",
        "BLOCK_IO_ERROR",
    }
)


class Monitor:
    """A connection to one VM's QMP socket.

    Use as a context manager::

        with Monitor(paths.qmp_socket) as mon:
            mon.stop()

    :param socket_path: the QMP UNIX socket.
    :param timeout: seconds allowed to connect and for each command.
    """

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        self._listener: Any = None

    def __enter__(self) -> Monitor:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout or self.timeout))

    def connect(self) -> None:
        """Connect and negotiate capabilities; start collecting events.

        :raise MonitorError: the socket does not answer.
        """
        from qemu.qmp import EventListener, QMPClient

        self._client = QMPClient("corral")
        self._listener = EventListener()
        self._client.register_listener(self._listener)
        try:
            self._run(self._client.connect(self.socket_path))
        except Exception as exc:  # OSError, timeouts and qemu.qmp's ConnectError alike
            self.close()
            raise MonitorError("connect", f"{self.socket_path}: {exc}") from exc

    def close(self) -> None:
        """Disconnect (idempotent)."""
        if self._client is not None:
            # A failed disconnect leaves nothing to clean up.
            with contextlib.suppress(Exception):
                self._run(self._client.disconnect(), timeout=5.0)
            self._client = None
        if not self._loop.is_closed():
            self._loop.close()

    def execute(self, command: str, arguments: dict[str, object] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value.

        :raise MonitorError: QEMU answered with an error, or the connection failed.
        """
        from qemu.qmp import ExecuteError

        if self._client is None:
            raise MonitorError(command, "not connected", arguments)
        try:
            return self._run(self._client.execute(command, arguments))
        except ExecuteError as exc:
            raise MonitorError(command, exc.error.error.desc, arguments, exc.error_class) from exc
        except TimeoutError as exc:
            raise MonitorError(
                command, f"no answer within {self.timeout:.0f} s", arguments
            ) from exc
        except Exception as exc:
            raise MonitorError(command, str(exc) or type(exc).__name__, arguments) from exc

    # -- events ------------------------------------------------------------------------------

    def wait_event(self, names: Iterable[str], timeout: float) -> dict[str, Any] | None:
        """Wait for the next event whose name is in ``names``; ``None`` after ``timeout``.

        Events that arrived since the connection was made count too.
        """
        wanted = set(names)

        async def next_matching() -> dict[str, Any]:
            while True:
                event = await self._listener.get()
                if event["event"] in wanted:
                    return dict(event)

        try:
            return self._run(next_matching(), timeout=timeout)
        except TimeoutError:
            return None

    # -- vocabulary --------------------------------------------------------------------------

    def query_status(self) -> RunState:
        """QEMU's run state (``running``, ``paused``, ``shutdown``, ``prelaunch``, ...)."""
        return str(self.execute("query-status")["status"])

    def stop(self) -> None:
        """Pause the vCPUs (``stop``)."""
        self.execute("stop")

    def cont(self) -> None:
        """Resume the vCPUs (``cont``)."""
        self.execute("cont")

    def system_powerdown(self) -> None:
        """Press the ACPI power button."""
        self.execute("system_powerdown")

    def system_reset(self) -> None:
        """Reset the machine, as the reset button does."""
        self.execute("system_reset")

    def set_shutdown_action(self, action: Literal["poweroff", "pause"]) -> None:
        """What QEMU does when the guest powers off: exit, or stay with the vCPUs stopped."""
        self.execute("set-action", {"shutdown": action})

    def quit(self) -> None:
        """Ask QEMU to exit now (the guest is not asked)."""
        from qemu.qmp import ConnectError

        try:
            self.execute("quit")
        except MonitorError as exc:
            # QEMU may close the socket before its answer arrives; that is success.
            if not isinstance(exc.__cause__, EOFError | ConnectError | ConnectionError):
                raise

    def query_block(self) -> list[dict[str, Any]]:
        return list(self.execute("query-block"))

    def query_named_block_nodes(self) -> list[dict[str, Any]]:
        return list(self.execute("query-named-block-nodes", {"flat": True}))
