"""The daemons tests start: each CLI verb starts its state directory's corrald on demand, and
every one of them is stopped when the session ends (or when its fixture ends, sooner)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from corral.api.server import PIDFILE_NAME

_started: set[int] = set()


def note(home: Path) -> None:
    """Remember the daemon of ``home``, if one runs."""
    with contextlib.suppress(OSError, ValueError):
        _started.add(int((home / PIDFILE_NAME).read_text()))


def stop(home: Path, timeout: float = 20.0) -> None:
    """Stop the daemon of ``home`` (SIGTERM, then SIGKILL after ``timeout``) and wait for it."""
    try:
        pid = int((home / PIDFILE_NAME).read_text())
    except (OSError, ValueError):
        return
    _stop_pid(pid, timeout)
    _started.discard(pid)


def stop_all() -> None:
    for pid in list(_started):
        _stop_pid(pid, 20.0)
    _started.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float) -> None:
    if not _alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"serve" not in cmdline:  # the PID was reused by something else
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
