"""The VM life cycle as an explicit state machine.

::

                 start              ready/QMP up
    defined ──────────────> starting ──────────> running <──── resume ──── paused
       ^                      │  │                │ │ │ ──── pause ────────> │
       │              failure │  │ QEMU died      │ │ └─ stop ─> stopping    │
    (create)                  v  v                │ │              │ │       │
                          shutoff  crashed <──────┘ │ QEMU died    │ │       │
                            ^  ^      ^             │              │ │       │
                            │  └──────┼─── destroy / guest power-off ┘       │
                            │         └──────────── QEMU died ───────────────┘
                            └──────────── destroy ───────────────────────────┘

Operations name the states they may start from (:data:`ALLOWED`); state changes are checked
against :data:`TRANSITIONS`. A violation raises :class:`~corral.errors.StateError` naming the
current state and the states the operation needs.
"""

from __future__ import annotations

from enum import StrEnum

from corral.errors import StateError


class VmState(StrEnum):
    """Where a VM is in its life cycle."""

    DEFINED = "defined"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"

    @property
    def active(self) -> bool:
        """Whether a QEMU process is (or should be) running."""
        return self in _ACTIVE


_ACTIVE = frozenset({VmState.STARTING, VmState.RUNNING, VmState.PAUSED, VmState.STOPPING})


class Op(StrEnum):
    """User operations on a VM."""

    START = "start"
    STOP = "stop"
    DESTROY = "destroy"
    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    DELETE = "delete"
    CONSOLE = "console"
    #: Change vCPUs, memory or port forwards.
    UPDATE = "update"
    #: Send a command to QEMU's monitor.
    MONITOR = "monitor"
    #: Hard reset, as the reset button does (``system_reset``).
    RESET = "reset"
    #: Insert or eject the CD-ROM drive's medium (recorded when shut off, also live when
    #: running).
    CDROM = "cdrom"
    #: Take a disk snapshot.
    SNAPSHOT = "snapshot"
    #: Go back to a disk snapshot.
    REVERT = "revert"
    #: Delete a snapshot, merging its layer.
    SNAPSHOT_DELETE = "snapshot-delete"
    #: Clone the VM's disks as they are now (a snapshot of it is cloned in any state).
    CLONE = "clone"
    #: Clone one of the VM's snapshots (frozen layers: any steady state).
    CLONE_SNAPSHOT = "clone-snapshot"
    #: Take a snapshot with the guest's memory and device state.
    SNAPSHOT_MEMORY = "snapshot-memory"
    #: Go back to a snapshot with memory: the guest resumes where it was.
    REVERT_MEMORY = "revert-memory"
    #: Add or remove a USB device (recorded when shut off, also live when running).
    USB = "usb"
    #: Add or remove a NIC, or set its link (recorded when shut off, also live when running).
    NIC = "nic"
    #: Set or clear the VNC password (kept for the next start, also live when running).
    VNC_AUTH = "vnc-auth"


S = VmState

#: The states each operation may start from.
ALLOWED: dict[Op, frozenset[VmState]] = {
    Op.START: frozenset({S.DEFINED, S.SHUTOFF, S.CRASHED}),
    Op.STOP: frozenset({S.RUNNING, S.STOPPING}),
    Op.DESTROY: frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING}),
    Op.PAUSE: frozenset({S.RUNNING}),
    Op.RESUME: frozenset({S.PAUSED}),
    Op.REBOOT: frozenset({S.RUNNING}),
    Op.DELETE: frozenset({S.DEFINED, S.SHUTOFF, S.CRASHED}),
    Op.CONSOLE: frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING}),
    Op.UPDATE: frozenset({S.DEFINED, S.SHUTOFF, S.CRASHED}),
    Op.MONITOR: frozenset({S.RUNNING, S.PAUSED}),
    Op.RESET: frozenset({S.RUNNING, S.PAUSED}),
    Op.CDROM: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.SNAPSHOT: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.REVERT: frozenset({S.DEFINED, S.SHUTOFF, S.CRASHED}),
    Op.SNAPSHOT_DELETE: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.SNAPSHOT_MEMORY: frozenset({S.RUNNING, S.PAUSED}),
    Op.REVERT_MEMORY: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.CLONE: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.USB: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.NIC: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.VNC_AUTH: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
    Op.CLONE_SNAPSHOT: frozenset({S.DEFINED, S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED}),
}

#: What to do about a refusal, for operations whose fix is not obvious from the states.
HINTS: dict[Op, str] = {
    Op.REVERT: "a disk-only snapshot is reverted with the VM stopped: stop it first",
    Op.CLONE: "a VM that is starting or stopping is cloned once it has: wait for it",
    Op.SNAPSHOT_MEMORY: "memory is saved from a running or paused VM: start it first",
}

#: Every state change the system may make, by cause: user operations, QEMU exiting,
#: the guest powering off, and reconciliation after an interrupted command.
TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    S.DEFINED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.RUNNING, S.PAUSED, S.SHUTOFF, S.CRASHED, S.DEFINED}),
    S.RUNNING: frozenset({S.PAUSED, S.STOPPING, S.SHUTOFF, S.CRASHED}),
    S.PAUSED: frozenset({S.RUNNING, S.SHUTOFF, S.CRASHED}),
    S.STOPPING: frozenset({S.RUNNING, S.SHUTOFF, S.CRASHED}),
    S.SHUTOFF: frozenset({S.STARTING}),
    S.CRASHED: frozenset({S.STARTING, S.SHUTOFF}),
}


def require(vm: str, op: Op, current: VmState) -> None:
    """Check that ``op`` may run on a VM in state ``current``.

    :raise StateError: naming the current state and the states ``op`` needs.
    """
    allowed = ALLOWED[op]
    if current not in allowed:
        raise StateError(
            vm,
            op.value,
            current.value,
            [s.value for s in VmState if s in allowed],
            HINTS.get(op, ""),
        )


def check_transition(vm: str, current: VmState, new: VmState) -> None:
    """Check that the state machine allows ``current`` -> ``new`` (a no-op change is allowed).

    :raise StateError: when the table has no such edge.
    """
    if new != current and new not in TRANSITIONS[current]:
        sources = [state.value for state in VmState if new in TRANSITIONS[state]]
        raise StateError(vm, f"move to {new.value}", current.value, sources)
