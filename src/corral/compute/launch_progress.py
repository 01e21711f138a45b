"""What a launch has done so far: each instance's phases as they begin, end or fail, and how
the launch ended.

A :class:`LaunchProgress` is fed by the launch's threads (it is the launch's
:data:`~corral.compute.launch.ProgressFn`, then :meth:`~LaunchProgress.succeeded` or
:meth:`~LaunchProgress.failed`) and read by any number of clients: :meth:`~LaunchProgress.view`
is a consistent snapshot, and every change raises its :attr:`~LaunchView.version`, so that a
client that has seen version ``N`` waits (:meth:`~LaunchProgress.changed`) for the next one
instead of asking again and again. :class:`Launches` holds the launches of one daemon by task
id: those running, and the last :data:`KEEP` that ended. They live as long as the daemon; the
instances themselves are the lasting record.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from corral.compute.launch import PHASES, Instance, LaunchFailed, Phase, PhaseEvent
from corral.errors import CorralError, GuestTimeout, InvalidInput, LaunchError

#: Ended launches a daemon keeps for their clients.
KEEP = 256

PhaseState = Literal["running", "done", "failed"]
#: ``pending`` (QEMU not started yet), ``running`` (started, not yet answering SSH),
#: ``ready`` (SSH answers), ``not ready`` (not by the deadline; left running), ``removed``
#: (the launch failed before it waited, and removed every instance it had made).
InstanceStatus = Literal["pending", "running", "ready", "not ready", "removed"]
LaunchStatus = Literal["running", "success", "error"]


@dataclass(frozen=True)
class PhaseView:
    """One phase of one instance."""

    state: PhaseState
    #: How long it took; ``None`` while it runs.
    seconds: float | None = None


@dataclass(frozen=True)
class InstanceView:
    """One instance of a launch, so far."""

    name: str
    status: InstanceStatus
    user: str
    keypair: str
    #: Where its SSH server is reached: the daemon's host (a forward), or the instance's
    #: first managed network's address when it has no user-mode NIC.
    address: str
    #: Known once ``clone`` has begun.
    instance_id: str | None = None
    #: Known once ``clone`` has reserved it.
    port: int | None = None
    #: The phases begun so far, in :data:`~corral.compute.launch.PHASES` order.
    phases: dict[Phase, PhaseView] = field(default_factory=dict)
    #: Why it is not ready.
    error: str | None = None
    #: The OpenSSH command that logs in from the daemon's host, once ready.
    ssh_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErrorView:
    """Why a launch failed: the error's class, message, HTTP status and the field it names;
    the guest's (or QEMU's) last lines when they tell more."""

    kind: str
    message: str
    status: int
    field: str | None = None
    last_lines: tuple[str, ...] = ()

    @classmethod
    def of(cls, exc: BaseException) -> ErrorView:
        """The view of ``exc`` (an exception that is no :class:`CorralError` is a bug)."""
        if not isinstance(exc, CorralError):
            return cls("InternalError", f"internal error: {exc!r}", 500)
        lines: tuple[str, ...] = ()
        if isinstance(exc, LaunchFailed | GuestTimeout):
            lines = tuple(exc.last_lines)
        elif isinstance(exc, LaunchError):
            lines = (*exc.output, f"command: {' '.join(exc.argv)}")
        where = exc.field if isinstance(exc, InvalidInput) else None
        return cls(type(exc).__name__, exc.message, exc.status, where, lines)


@dataclass(frozen=True)
class LaunchView:
    """A launch, so far."""

    task_id: str
    project: str
    status: LaunchStatus
    #: Grows with every change.
    version: int
    instances: tuple[InstanceView, ...]
    error: ErrorView | None = None

    @property
    def final(self) -> bool:
        return self.status != "running"


_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class LaunchProgress:
    """The progress of one launch (fed from any thread, read from any thread or event loop).

    :param project: the project the instances go into.
    :param names: the instances' names, in order.
    :param user: their login user; :param keypair: the key pair installed;
    :param address: where their SSH forwards listen.
    """

    def __init__(
        self, project: str, names: Sequence[str], user: str, keypair: str, address: str
    ) -> None:
        self._lock = threading.Lock()
        self._task_id = ""
        self._project = project
        self._instances = {n: InstanceView(n, "pending", user, keypair, address) for n in names}
        self._status: LaunchStatus = "running"
        self._error: ErrorView | None = None
        self._version = 0
        self._waiters: set[_Waiter] = set()

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def view(self) -> LaunchView:
        """A snapshot."""
        with self._lock:
            return LaunchView(
                self._task_id,
                self._project,
                self._status,
                self._version,
                tuple(self._instances.values()),
                self._error,
            )

    def bind(self, task_id: str) -> None:
        """Name the task that runs the launch."""
        with self._lock:
            self._task_id = task_id

    def __call__(self, event: PhaseEvent) -> None:
        """Record a phase that began, ended or failed (from any of the launch's threads)."""
        with self._lock:
            now = self._instances.get(event.instance)
            if now is None or self._status != "running":
                return
            phases = dict(now.phases)
            if event.status == "begin":
                phases[event.phase] = PhaseView("running")
            else:
                state: PhaseState = "done" if event.status == "end" else "failed"
                phases[event.phase] = PhaseView(state, event.seconds)
            status = now.status
            if event.status == "end" and event.phase == "start":
                status = "running"
            elif event.status == "end" and event.phase == "ready":
                status = "ready"
            self._instances[event.instance] = replace(
                now,
                status=status,
                phases={p: phases[p] for p in PHASES if p in phases},
                instance_id=event.instance_id or now.instance_id,
                port=event.port or now.port,
                address=event.host or now.address,
            )
            self._changed()

    def succeeded(self, instances: Sequence[Instance]) -> None:
        """The launch returned ``instances``."""
        with self._lock:
            self._settle(instances)
            self._status = "success"
            self._changed()

    def failed(self, exc: BaseException) -> None:
        """The launch raised ``exc``: instances it had not waited for were removed (unless
        ``exc`` is a :class:`LaunchFailed`, which keeps them all)."""
        with self._lock:
            if isinstance(exc, LaunchFailed):
                self._settle(exc.instances)
            else:
                for name, now in self._instances.items():
                    if now.status in ("pending", "running"):
                        self._instances[name] = replace(now, status="removed")
            self._status = "error"
            self._error = ErrorView.of(exc)
            self._changed()

    def _settle(self, instances: Sequence[Instance]) -> None:
        for i in instances:
            now = self._instances.get(i.name)
            if now is None:
                continue
            status: InstanceStatus = "ready" if i.status == "ready" else now.status
            if i.error is not None:
                status = "not ready"
            self._instances[i.name] = replace(
                now,
                status=status,
                instance_id=i.instance_id,
                port=i.port or now.port,
                address=i.host or now.address,
                error=None if i.error is None else i.error.message,
                ssh_command=tuple(i.ssh_command),
            )

    def _changed(self) -> None:
        """Under the lock: a new version; wake every waiter."""
        self._version += 1
        for loop, event in self._waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)

    async def changed(self, after: int, timeout: float) -> None:
        """Return once the version is past ``after`` or the launch has ended, or after
        ``timeout`` seconds (whichever comes first)."""
        waiter: _Waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._version > after or self._status != "running":
                return
            self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout)
        finally:
            with self._lock:
                self._waiters.discard(waiter)


class Launches:
    """One daemon's launches by task id: every running one and the last :data:`KEEP` ended."""

    def __init__(self, keep: int = KEEP) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._by_task: OrderedDict[str, LaunchProgress] = OrderedDict()

    def add(self, task_id: str, progress: LaunchProgress) -> None:
        progress.bind(task_id)
        with self._lock:
            self._by_task[task_id] = progress
            ended = [t for t, p in self._by_task.items() if p.view().final]
            for old in ended[: max(0, len(ended) - self._keep)]:
                del self._by_task[old]

    def get(self, task_id: str) -> LaunchProgress | None:
        with self._lock:
            return self._by_task.get(task_id)


__all__ = [
    "KEEP",
    "ErrorView",
    "InstanceView",
    "LaunchProgress",
    "LaunchView",
    "Launches",
    "PhaseView",
]
