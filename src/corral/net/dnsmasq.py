"""One dnsmasq per managed network: its files, its process, its supervision.

A network's dnsmasq reads only its own configuration (``--conf-file``, nothing from
``/etc``) and daemonizes itself: its parent exits only once the daemon has bound its sockets
(with a non-zero status and dnsmasq's reason when it could not), so a start either fails at
once, with the reason, or leaves a running daemon in a session of its own that outlives
corral. The daemon writes its PID to the network's pidfile; corral recognises it by that PID
and the process's start time (a reused PID is never taken for it), recorded in ``process``.

Host lists (``dhcp-hostsfile``, ``addn-hosts``) are re-read on ``SIGHUP``; a changed
configuration needs a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from corral.errors import HostError, ToolError
from corral.net.plan import DnsmasqFiles
from corral.qemu.process import start_ticks

#: How long a dnsmasq may take to start (write its pidfile) or to end after SIGTERM.
DEADLINE = 10.0
_POLL = 0.02


@dataclass(frozen=True)
class Daemon:
    """A running dnsmasq, identified by PID and start time (clock ticks since boot)."""

    pid: int
    start_ticks: int

    @property
    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks


def _record(files: DnsmasqFiles) -> Path:
    return Path(files.root) / "process"


def running(files: DnsmasqFiles) -> Daemon | None:
    """The network's dnsmasq if it is still the one corral started."""
    try:
        pid, ticks = (int(x) for x in _record(files).read_text().split())
    except (FileNotFoundError, ValueError):
        return None
    daemon = Daemon(pid, ticks)
    return daemon if daemon.alive else None


def write_atomic(path: Path, text: str) -> bool:
    """Replace ``path``'s content with ``text`` in one rename.

    :return: whether the content changed.
    """
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def _read_pid(files: DnsmasqFiles, deadline: float) -> Daemon | None:
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(Path(files.pidfile).read_text().strip())
            ticks = start_ticks(pid)
            if ticks is not None:
                return Daemon(pid, ticks)
        time.sleep(_POLL)
    return None


def start(files: DnsmasqFiles) -> Daemon:
    """Start the network's dnsmasq on its configuration file.

    :raise ToolError: dnsmasq refused to start (its reason), or wrote no pidfile in time.
    :raise HostError: dnsmasq is not installed.
    """
    binary = shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None
    )
    if binary is None:
        raise HostError("dnsmasq not found: install dnsmasq-base")
    Path(files.pidfile).unlink(missing_ok=True)
    argv = [binary, f"--conf-file={files.conf}"]
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE, check=False
    )
    if done.returncode != 0:
        raise ToolError(argv, done.returncode, done.stderr.decode(errors="replace"))
    daemon = _read_pid(files, time.monotonic() + DEADLINE)
    if daemon is None:
        raise ToolError(argv, 0, f"dnsmasq wrote no pidfile {files.pidfile} in {DEADLINE:g} s")
    write_atomic(_record(files), f"{daemon.pid} {daemon.start_ticks}\n")
    return daemon


def reload(daemon: Daemon) -> None:
    """Make ``daemon`` re-read its host lists (``SIGHUP``)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon.pid, signal.SIGHUP)


def stop(files: DnsmasqFiles) -> None:
    """End the network's dnsmasq (``SIGTERM``, then ``SIGKILL`` past the deadline) and wait
    until it is gone; one that is not running is no error."""
    daemon = running(files)
    if daemon is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGTERM)
        deadline = time.monotonic() + DEADLINE
        while daemon.alive and time.monotonic() < deadline:
            time.sleep(_POLL)
        if daemon.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGKILL)
            while daemon.alive:
                time.sleep(_POLL)
    _record(files).unlink(missing_ok=True)
