"""What state a VM is really in, from its record and what is true on the host.

Commands record a state before and after each step; a command killed half-way leaves a
record (``starting``, ``stopping``) that :func:`observed_state` turns back into the truth from
the QEMU process, its exit record and its monitor. Pure: the facts come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.compute.state import VmState
from corral.qemu.process import ExitRecord


@dataclass(frozen=True)
class Observation:
    """The facts about one VM's QEMU."""

    #: Whether the recorded QEMU process is alive.
    alive: bool
    #: Its exit record, when it has ended.
    exit: ExitRecord | None = None
    #: ``query-status`` run state, when the monitor was asked.
    qmp_status: str | None = None


_PAUSED_STATUSES = frozenset(
    {"paused", "suspended", "io-error", "watchdog", "guest-panicked", "internal-error"}
)


def observed_state(recorded: VmState, seen: Observation) -> tuple[VmState, str | None]:
    """The state ``seen`` implies for a VM recorded as ``recorded``.

    :return: the state, and a reason when it changed (``None`` when it did not).
    """
    if not recorded.active:
        if seen.alive:
            return VmState.RUNNING, "QEMU found running"
        return recorded, None
    if not seen.alive:
        if seen.exit is None:
            if recorded is VmState.STARTING:
                return VmState.SHUTOFF, "start was interrupted before QEMU came up"
            return VmState.CRASHED, "QEMU disappeared without an exit record"
        if seen.exit.clean:
            reason = "stopped" if recorded is VmState.STOPPING else "guest powered off"
            return VmState.SHUTOFF, reason
        return VmState.CRASHED, seen.exit.describe()
    status = seen.qmp_status
    if status == "running":
        new = VmState.RUNNING if recorded is not VmState.STOPPING else VmState.STOPPING
    elif status in _PAUSED_STATUSES:
        new = VmState.PAUSED
    elif recorded is VmState.STARTING:
        new = VmState.RUNNING
    else:
        new = recorded
    if new is recorded:
        return recorded, None
    return new, f"QEMU reports {status or 'a live process'}"
