"""The QMP vocabulary corral speaks, over the ``qemu.qmp`` protocol library.

``qemu.qmp`` is the transport (asyncio); this module is the vocabulary: one method per QMP
command corral uses, each raising :class:`~corral.errors.MonitorError` with what was sent and
QEMU's error class. :class:`Monitor` is a synchronous facade for command-line use; it owns a
private event loop for the life of one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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


def snapshot_action(node: str, overlay: str) -> dict[str, object]:
    """A ``blockdev-snapshot`` action for :meth:`Monitor.transaction`: ``overlay`` (a node
    opened without a backing) is put on top of ``node`` and takes its writes from then on."""
    return {"type": "blockdev-snapshot", "data": {"node": node, "overlay": overlay}}


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

    def query_commands(self) -> list[str]:
        """The names of the QMP commands this QEMU accepts, sorted."""
        return sorted(str(entry["name"]) for entry in self.execute("query-commands"))

    def human_monitor_command(self, command_line: str) -> str:
        """Run one HMP command line through QMP (``human-monitor-command``); its output."""
        return str(self.execute("human-monitor-command", {"command-line": command_line}))

    # -- VNC password ----------------------------------------------------------------------------

    def set_vnc_password(self, password: str) -> None:
        """Make ``password`` the VNC display's password (``set_password``); QEMU refuses it
        unless the display was started with password auth."""
        self.execute("set_password", {"protocol": "vnc", "password": password})

    def expire_vnc_password(self, seconds: int | None) -> None:
        """Let the VNC password expire ``seconds`` from now (``None``: never)."""
        when = "never" if seconds is None else f"+{seconds}"
        self.execute("expire_password", {"protocol": "vnc", "time": when})

    # -- removable media -------------------------------------------------------------------------

    def blockdev_open_tray(self, device: str, force: bool = True) -> None:
        """Open a removable drive's tray; with ``force``, even if the guest locked it."""
        self.execute("blockdev-open-tray", {"id": device, "force": force})

    def blockdev_close_tray(self, device: str) -> None:
        """Close a removable drive's tray."""
        self.execute("blockdev-close-tray", {"id": device})

    def blockdev_remove_medium(self, device: str) -> None:
        """Take the medium out of a drive whose tray is open (no-op for an empty drive)."""
        self.execute("blockdev-remove-medium", {"id": device})

    def blockdev_insert_medium(self, device: str, node_name: str) -> None:
        """Put the block node ``node_name`` into a drive whose tray is open and empty."""
        self.execute("blockdev-insert-medium", {"id": device, "node-name": node_name})

    # -- hotplug ------------------------------------------------------------------------------

    def device_add(self, options: dict[str, object]) -> None:
        """Plug a device in; ``options`` names its ``driver`` and ``id``."""
        self.execute("device_add", options)

    def device_del(self, device: str) -> None:
        """Ask the guest to release the device ``device``; it is gone only once QEMU sends
        ``DEVICE_DELETED`` for it (see :meth:`wait_device_deleted`)."""
        self.execute("device_del", {"id": device})

    def wait_device_deleted(self, device: str, timeout: float) -> bool:
        """Wait for ``DEVICE_DELETED`` of ``device`` (events since the connection count);
        ``False`` when ``timeout`` seconds pass without it."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self.wait_event(["DEVICE_DELETED"], left)
            if event is None:
                return False
            if event.get("data", {}).get("device") == device:
                return True
        return False

    def qom_exists(self, path: str) -> bool:
        """Whether the QOM object ``path`` exists (``/machine/peripheral/<id>`` for a device
        with an id)."""
        try:
            self.execute("qom-list", {"path": path})
        except MonitorError as exc:
            if exc.error_class == "DeviceNotFound":
                return False
            raise
        return True

    def block_resize(self, node_name: str, size: int) -> None:
        """Grow the image under the block node ``node_name`` to ``size`` bytes; the guest's
        disk grows with it."""
        self.execute("block_resize", {"node-name": node_name, "size": size})

    # -- block graph ---------------------------------------------------------------------------

    def node_for_file(self, filename: str, driver: str = "qcow2") -> str:
        """The name of the ``driver`` node that has ``filename`` open.

        :raise MonitorError: no such node (or the query failed).
        """
        for node in self.query_named_block_nodes():
            if node.get("drv") == driver and node.get("file") == filename:
                return str(node["node-name"])
        raise MonitorError("query-named-block-nodes", f"no {driver} node has {filename} open")

    def blockdev_add(self, options: dict[str, object]) -> None:
        """Open a block node (``blockdev-add``); ``options`` name its driver and node name."""
        self.execute("blockdev-add", options)

    def blockdev_del(self, node_name: str) -> None:
        """Close a block node that nothing uses any more (``blockdev-del``)."""
        self.execute("blockdev-del", {"node-name": node_name})

    def transaction(self, actions: list[dict[str, object]]) -> None:
        """Run ``actions`` atomically (``transaction``): all of them happen, or none does.

        :param actions: ``{"type": ..., "data": {...}}`` each.
        """
        self.execute("transaction", {"actions": actions})

    def block_stream(self, job_id: str, node: str, base_node: str | None) -> None:
        """Start copying into ``node`` whatever it reads from its backing chain above
        ``base_node`` (all of it when ``None``); ``node`` is then backed by ``base_node``."""
        args: dict[str, object] = {"job-id": job_id, "device": node}
        if base_node is not None:
            args["base-node"] = base_node
        self.execute("block-stream", args)

    def wait_job(self, job_id: str, timeout: float) -> None:
        """Wait until block job ``job_id`` has ended (it finalises and dismisses itself).

        A QEMU that dies sends no event: when the monitor connection closes and no event is
        left to read, the wait fails at once rather than at ``timeout``.

        :raise MonitorError: the job failed or was cancelled, QEMU closed the connection,
            or the job did not end within ``timeout``.
        """
        from qemu.qmp.protocol import Runstate

        ends = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")
        client, listener = self._client, self._listener
        if client is None:
            raise MonitorError("block-job", "not connected", {"job": job_id})

        async def next_end() -> dict[str, Any] | None:
            while True:
                if listener.empty() and client.runstate is not Runstate.RUNNING:
                    return None
                get = asyncio.ensure_future(listener.get())
                gone = asyncio.ensure_future(client.runstate_changed())
                try:
                    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (get, gone):
                        task.cancel()
                    await asyncio.gather(get, gone, return_exceptions=True)
                if get.cancelled() or get.exception() is not None:
                    continue
                event = dict(get.result())
                if event["event"] in ends and event.get("data", {}).get("device") == job_id:
                    return event

        try:
            event = self._run(next_end(), timeout=max(timeout, 0.001))
        except TimeoutError as exc:
            raise MonitorError(
                "block-job", f"job {job_id} did not end within {timeout:.0f} s"
            ) from exc
        if event is None:
            raise MonitorError("block-job", f"job {job_id}: QEMU closed its monitor (it is gone)")
        data = event.get("data", {})
        if event["event"] == "BLOCK_JOB_CANCELLED":
            raise MonitorError("block-job", f"job {job_id} was cancelled")
        if event["event"] == "BLOCK_JOB_ERROR":
            raise MonitorError("block-job", f"job {job_id}: I/O error ({data})")
        if data.get("error"):
            raise MonitorError("block-job", f"job {job_id}: {data['error']}")

    # -- file descriptors and migration --------------------------------------------------------

    def getfd(self, name: str, fd: int) -> None:
        """Hand QEMU a copy of the open file ``fd`` (SCM_RIGHTS over the QMP socket) under
        ``name``; ``fd:<name>`` migration URIs use it, and QEMU closes it when done with it.
        The caller keeps (and closes) its own ``fd``.

        :raise MonitorError: the socket refused the descriptor or QEMU the command.
        """
        if self._client is None:
            raise MonitorError("getfd", "not connected", {"fdname": name})
        try:
            self._client.send_fd_scm(fd)
        except Exception as exc:
            raise MonitorError("getfd", f"cannot pass the descriptor: {exc}") from exc
        self.execute("getfd", {"fdname": name})

    def closefd(self, name: str) -> None:
        """Close the descriptor QEMU holds under ``name`` (after a failure that left it)."""
        self.execute("closefd", {"fdname": name})

    def migrate_capabilities(self) -> dict[str, bool]:
        """The migration capabilities this QEMU has, each with whether it is on."""
        found = self.execute("query-migrate-capabilities")
        return {str(c["capability"]): bool(c["state"]) for c in found}

    def migrate_set_capabilities(self, capabilities: dict[str, bool]) -> None:
        """Turn migration capabilities on or off (before a migration starts)."""
        listed = [{"capability": k, "state": v} for k, v in sorted(capabilities.items())]
        self.execute("migrate-set-capabilities", {"capabilities": listed})

    def migrate_set_parameters(self, parameters: dict[str, object]) -> None:
        """Set migration parameters (``max-bandwidth`` in bytes per second, ...)."""
        self.execute("migrate-set-parameters", parameters)

    def migrate(self, uri: str) -> None:
        """Start sending the machine's state (RAM and devices) to ``uri`` (``fd:<name>``);
        :meth:`wait_migration` says when it has ended."""
        self.execute("migrate", {"uri": uri})

    def migrate_incoming(self, uri: str) -> None:
        """Start loading the machine's state from ``uri`` into a QEMU started with
        ``-incoming defer``; :meth:`wait_migration` says when it has ended."""
        self.execute("migrate-incoming", {"uri": uri})

    def query_migrate(self) -> dict[str, Any]:
        """The migration's status (``{}`` before any), as ``query-migrate`` reports it."""
        return dict(self.execute("query-migrate"))

    def wait_migration(self, timeout: float) -> dict[str, Any]:
        """Wait until the migration (outgoing or incoming) has completed.

        Wakes on each ``MIGRATION`` event (the ``events`` capability must be on) and asks
        ``query-migrate`` then, so a change made before the wait began is seen too.

        :return: the final ``query-migrate`` answer (status ``completed``).
        :raise MonitorError: it failed or was cancelled, QEMU went away, or it did not
            complete within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self.query_migrate()
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                reason = info.get("error-desc") or status
                raise MonitorError("query-migrate", f"migration {status}: {reason}")
            left = deadline - time.monotonic()
            if left <= 0 or self.wait_event(["MIGRATION"], left) is None:
                raise MonitorError(
                    "query-migrate",
                    f"migration did not complete within {timeout:.0f} s (status {status})",
                )

    def migrate_cancel(self) -> None:
        """Cancel the outgoing migration; the machine keeps running from its own state."""
        self.execute("migrate_cancel")
