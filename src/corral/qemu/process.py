"""QEMU processes: launch detached from corral, recognise, wait for and end them.

A guest's QEMU runs in its own session under a two-line ``sh`` supervisor whose only job is to
record QEMU's exit status in ``qemu.exit`` when it ends. corral itself never stays the parent:
killing or restarting corral never stops a guest, and any later command re-adopts it by the PID
in its record, checked against the process start time so that a reused PID is never mistaken
for the guest. The exit record tells a clean end (status 0: guest power-off, ``quit``) from a
crash (non-zero, killed by a signal) or a vanished process (no record at all).

A QEMU that draws a ``curses`` display runs on a terminal of its own: the supervisor then runs
under a terminal holder (:mod:`corral.qemu.ptyholder`) that keeps the terminal and serves it
on the VM's ``text.sock``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.errors import LaunchError
from corral.qemu.paths import VmPaths

#: Runs QEMU ("$@") and records its exit status atomically. No user data is interpolated:
#: the argv travels as positional parameters and the record's path in the environment.
_SUPERVISOR = (
    '"$@"; rc=$?; '
    'printf "%s\\n" "$rc" > "$CORRAL_EXIT.tmp" && mv -f "$CORRAL_EXIT.tmp" "$CORRAL_EXIT"'
)
#: A log larger than this is rotated (to ``.1``) when the VM starts.
_ROTATE_BYTES = 8 * 1024 * 1024
_LOG_LINES = 12


@dataclass(frozen=True)
class QemuProcess:
    """A running QEMU, identified by PID and start time (clock ticks since boot)."""

    pid: int
    start_ticks: int


@dataclass(frozen=True)
class ExitRecord:
    """How a QEMU process ended, as its supervisor recorded it."""

    #: Exit status as the shell reports it (128 + N when killed by signal N).
    status: int

    @property
    def clean(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        if self.status == 0:
            return "QEMU exited normally"
        if self.status > 128:
            signum = self.status - 128
            with contextlib.suppress(ValueError):
                return f"QEMU was killed by {signal.Signals(signum).name}"
        return f"QEMU exited with status {self.status}"


@dataclass(frozen=True)
class Runtime:
    """What was launched, persisted beside the VM so it can be re-adopted and restarted alike."""

    argv: tuple[str, ...]
    pid: int
    start_ticks: int
    started_at: float
    #: The ``sh`` supervisor that records QEMU's exit status, and its start time.
    supervisor_pid: int | None = None
    supervisor_start: int | None = None

    @classmethod
    def load(cls, vm_dir: Path) -> Runtime | None:
        try:
            data = json.loads((vm_dir / "runtime.json").read_text())
            data["argv"] = tuple(data["argv"])
            return cls(**data)
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def save(self, vm_dir: Path) -> None:
        tmp = vm_dir / "runtime.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(vm_dir / "runtime.json")


def log_path(paths: VmPaths) -> Path:
    """QEMU's own stdout/stderr log."""
    return Path(paths.root) / "qemu.log"


def exit_path(paths: VmPaths) -> Path:
    return Path(paths.root) / "qemu.exit"


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or ``None`` if it is gone/a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(proc: QemuProcess) -> bool:
    """Whether ``proc`` is still the same running process."""
    return start_ticks(proc.pid) == proc.start_ticks


def read_exit(paths: VmPaths) -> ExitRecord | None:
    """The exit record of the last QEMU run, if its supervisor wrote one."""
    try:
        return ExitRecord(int(exit_path(paths).read_text().strip()))
    except (FileNotFoundError, ValueError):
        return None


def tail(path: Path, lines: int = _LOG_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a text file (empty if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [line.rstrip("\r") for line in data.splitlines() if line.strip()][-lines:]


def _rotate(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > _ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def rotate_logs(paths: VmPaths) -> None:
    """Move QEMU's and the serial console's logs aside (to ``.1``) once they grow large."""
    _rotate(log_path(paths))
    _rotate(Path(paths.serial_log))


def clear_runtime(paths: VmPaths) -> None:
    """Remove what a previous run left: sockets, pidfile, exit record, runtime record."""
    sockets = (
        paths.qmp_socket,
        paths.events_socket,
        paths.serial_socket,
        paths.vnc_socket,
        paths.text_socket,
    )
    for name in (*sockets, paths.pidfile):
        Path(name).unlink(missing_ok=True)
    exit_path(paths).unlink(missing_ok=True)
    (Path(paths.root) / "runtime.json").unlink(missing_ok=True)


def launch(argv: Sequence[str], paths: VmPaths, timeout: float = 30.0) -> QemuProcess:
    """Start QEMU detached from this process and wait until its monitor answers.

    :param argv: the full command line (:func:`corral.qemu.argv.build_argv`).
    :param paths: the VM's runtime files.
    :param timeout: how long QEMU may take to come up.
    :raise LaunchError: QEMU exited or did not answer; carries the argv and its last words.
    """
    clear_runtime(paths)
    log = log_path(paths)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CORRAL_EXIT": str(exit_path(paths))}
    with log.open("ab") as out:
        out.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')} starting QEMU\n".encode())
        out.flush()
        # setsid -f forks: the supervisor is re-parented to init at once, in its own session,
        # so it outlives this process and is never left a zombie of a long-lived corral.
        subprocess.run(
            [
                "setsid",
                "-f",
                *_holder(argv, paths),
                "/bin/sh",
                "-c",
                _SUPERVISOR,
                "corral-qemu",
                *argv,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            close_fds=True,
            env=env,
            cwd=paths.root,
            check=True,
        )
    deadline = time.monotonic() + timeout
    while True:
        record = read_exit(paths)
        if record is not None:
            clear_runtime(paths)
            raise LaunchError(argv, record.status, _qemu_output(log))
        if _monitor_answers(paths.qmp_socket):
            break
        if time.monotonic() > deadline:
            _kill_pidfile(paths)
            clear_runtime(paths)
            raise LaunchError(argv, None, _qemu_output(log))
        time.sleep(0.01)
    pid = int(Path(paths.pidfile).read_text().strip())
    ticks = start_ticks(pid)
    if ticks is None:
        raise LaunchError(argv, None, [*_qemu_output(log), "QEMU exited right after start"])
    proc = QemuProcess(pid, ticks)
    supervisor = parent_pid(pid)
    supervisor_ticks = start_ticks(supervisor) if supervisor else None
    Runtime(tuple(argv), pid, ticks, time.time(), supervisor, supervisor_ticks).save(
        Path(paths.root)
    )
    return proc


def wants_terminal(argv: Sequence[str]) -> bool:
    """Whether the QEMU of ``argv`` draws its display on its own terminal (``curses``)."""
    return any(
        flag == "-display" and value.split(",")[0] == "curses"
        for flag, value in itertools.pairwise(argv)
    )


def _holder(argv: Sequence[str], paths: VmPaths) -> list[str]:
    """The terminal holder to run the supervisor under, for a QEMU that needs a terminal.

    The holder is a file of the standard library only, run isolated (``-I``): it needs
    nothing of corral's installation.
    """
    if not wants_terminal(argv):
        return []
    from corral.qemu import ptyholder

    return [sys.executable, "-I", ptyholder.__file__, paths.text_socket, "--"]


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (``None`` if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def await_exit(paths: VmPaths, timeout: float = 5.0) -> ExitRecord | None:
    """The exit record of a QEMU that has ended, waiting for its supervisor to write it.

    QEMU's death is visible a moment before the supervisor has recorded how it died.
    """
    record = read_exit(paths)
    if record is not None:
        return record
    runtime = Runtime.load(Path(paths.root))
    if runtime is None or runtime.supervisor_pid is None or runtime.supervisor_start is None:
        return None
    wait_exit(QemuProcess(runtime.supervisor_pid, runtime.supervisor_start), timeout)
    return read_exit(paths)


def _qemu_output(log: Path) -> list[str]:
    lines = tail(log, 40)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("-- ") and "starting QEMU" in lines[i]:
            lines = lines[i + 1 :]
            break
    return lines[-_LOG_LINES:]


def _monitor_answers(qmp_socket: str) -> bool:
    """Whether QEMU's QMP socket accepts a connection and greets (QEMU is fully up)."""
    if not Path(qmp_socket).exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(qmp_socket)
            greeting = sock.recv(4096)
        except OSError:
            return False
    return b'"QMP"' in greeting


def _kill_pidfile(paths: VmPaths) -> None:
    try:
        pid = int(Path(paths.pidfile).read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    ticks = start_ticks(pid)
    if ticks is not None:
        kill(QemuProcess(pid, ticks), grace=2.0)


def wait_exit(proc: QemuProcess, timeout: float) -> bool:
    """Wait until ``proc`` has exited; ``True`` if it did within ``timeout`` seconds.

    Uses a pidfd, so the wait is woken by the exit itself, not by polling.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return True
    try:
        if not is_alive(proc):
            return True
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not is_alive(proc)
            if poller.poll(remaining * 1000):
                return True
    finally:
        os.close(fd)


def send_signal(proc: QemuProcess, signum: int) -> None:
    """Signal ``proc`` if it is still the same process."""
    if is_alive(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def kill(proc: QemuProcess, grace: float = 5.0) -> None:
    """End ``proc``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    send_signal(proc, signal.SIGTERM)
    if wait_exit(proc, grace):
        return
    send_signal(proc, signal.SIGKILL)
    wait_exit(proc, 10.0)


@dataclass(frozen=True)
class Usage:
    """Host resources a QEMU process uses."""

    #: CPU seconds consumed (user + system) since start.
    cpu_seconds: float
    #: Resident memory in bytes.
    rss: int


_TICK = os.sysconf("SC_CLK_TCK")


def usage(proc: QemuProcess) -> Usage | None:
    """CPU time and resident memory of ``proc`` (``None`` if it is gone)."""
    try:
        raw = Path(f"/proc/{proc.pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if int(fields[19]) != proc.start_ticks:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return Usage(cpu, rss)


def uptime_seconds() -> float:
    """Seconds since boot, as ``/proc/uptime`` reports."""
    return float(Path("/proc/uptime").read_text().split()[0])


def process_age(proc: QemuProcess) -> float:
    """Seconds since ``proc`` started."""
    return uptime_seconds() - proc.start_ticks / _TICK
