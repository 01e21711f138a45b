"""A machine's state (RAM and device state) saved to a file and loaded back, through QMP
migration to and from a file descriptor that corral opens and passes over the QMP socket.

QEMU runs sandboxed (``-sandbox spawn=deny``: no ``exec:`` URI) and is never asked to open a
path: corral opens the file, hands QEMU a copy with ``getfd`` (SCM_RIGHTS) and names it in an
``fd:`` URI. A save is complete only when ``query-migrate`` says ``completed``; a load runs
in a QEMU started with :func:`corral.qemu.argv.incoming_argv`, which exits if the stream is
bad.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from corral.errors import MonitorError
from corral.qemu.monitor import Monitor

#: The migration capabilities a save and a load turn on: ``events`` makes QEMU report each
#: change of the migration's status (``MIGRATION``), which the waits wake on.
CAPABILITIES = {"events": True}
#: Bytes per second a save may write: no throttle (QEMU's default is 32 MiB/s, meant for a
#: network shared with the guest's own traffic; a save goes to a local file).
SAVE_BANDWIDTH = 1 << 40
#: Seconds between two questions while QEMU finishes a completed save's migration.
SETTLE_POLL = 0.005
#: The name QEMU holds the passed descriptor under.
_SAVE_FD = "corral-save"
_LOAD_FD = "corral-load"


def _prepare(mon: Monitor) -> None:
    """Check and turn on the capabilities a save or load needs.

    :raise MonitorError: this QEMU lacks one.
    """
    have = mon.migrate_capabilities()
    missing = sorted(set(CAPABILITIES) - set(have))
    if missing:
        raise MonitorError(
            "query-migrate-capabilities", f"QEMU lacks migration capabilities {missing}"
        )
    mon.migrate_set_capabilities(CAPABILITIES)


def save(mon: Monitor, path: Path, mode: int, timeout: float) -> int:
    """Write the machine's state to the new file ``path``; the vCPUs should be stopped (then
    the state is one moment's and QEMU is left in ``postmigrate`` with its disks flushed).

    :param mode: the new file's permission bits.
    :param timeout: seconds the save may take.
    :return: the file's size in bytes.
    :raise MonitorError: QEMU refused, the save failed or did not complete in time (the
        migration is cancelled; the caller removes ``path``).
    :raise FileExistsError: ``path`` exists.
    """
    _prepare(mon)
    mon.migrate_set_parameters({"max-bandwidth": SAVE_BANDWIDTH})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        mon.getfd(_SAVE_FD, fd)
    finally:
        os.close(fd)
    try:
        mon.migrate(f"fd:{_SAVE_FD}")
    except MonitorError:
        with contextlib.suppress(MonitorError):
            mon.closefd(_SAVE_FD)
        raise
    deadline = time.monotonic() + timeout
    try:
        mon.wait_migration(timeout)
    except MonitorError:
        with contextlib.suppress(MonitorError):
            mon.migrate_cancel()
        raise
    _await_postmigrate(mon, deadline)
    size = path.stat().st_size
    if size == 0:
        raise MonitorError("migrate", f"the saved state {path} is empty")
    return size


def _await_postmigrate(mon: Monitor, deadline: float) -> None:
    """Wait until QEMU has left ``finish-migrate``: it reports a save ``completed`` a moment
    before its migration thread's clean-up moves the machine on (to ``postmigrate``), and
    refuses ``cont`` until then ("Migration is not finalized yet"). QEMU sends no event for
    that step, so its run state is asked until it has moved or the deadline passes.

    :raise MonitorError: still finishing at ``deadline``.
    """
    while True:
        status = mon.execute("query-status").get("status")
        if status != "finish-migrate":
            return
        if time.monotonic() >= deadline:
            raise MonitorError("query-status", "QEMU did not finish the save's migration")
        time.sleep(SETTLE_POLL)


def load(mon: Monitor, path: Path, timeout: float) -> None:
    """Load the machine's state from ``path`` into a QEMU waiting with ``-incoming defer``;
    its vCPUs stay stopped (``-S``) until the caller runs ``cont``.

    :raise MonitorError: QEMU refused the stream or did not finish in time (a QEMU whose
        load fails exits).
    :raise FileNotFoundError: ``path`` is gone.
    """
    _prepare(mon)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mon.getfd(_LOAD_FD, fd)
    finally:
        os.close(fd)
    mon.migrate_incoming(f"fd:{_LOAD_FD}")
    mon.wait_migration(timeout)
