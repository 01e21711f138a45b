"""The one qemu-img runner: a process under ``prlimit`` limits and a wall-clock timeout.

A crafted image header can make qemu-img allocate or loop, so :func:`run` executes it under
``prlimit`` (address space, CPU time, no core dumps) with a capped malloc arena count, kills
it past its timeout or when it prints too much, and always reaps it. It is the only function
in :mod:`corral.qemu.img` and its helpers that starts a process.

Errors: a failed run raises :class:`~corral.errors.ToolError` (the qemu-img argv without the
``prlimit`` prefix, its exit status, its error output); a missing ``qemu-img`` or ``prlimit``
raises :class:`~corral.errors.HostError`.
"""

from __future__ import annotations

import codecs
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cache

from corral.errors import HostError, ToolError
from corral.qemu.img_argv import QEMU_IMG
from corral.qemu.img_parse import ProgressParser

#: Called with the fraction done (0.0 to 1.0) while a conversion runs.
ProgressCallback = Callable[[float], None]

#: At most this much standard output is kept (``info`` of a sane image is a few KiB).
MAX_STDOUT = 16 * 1024 * 1024
#: The tail of standard error that is kept for error messages.
MAX_STDERR = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img process.

    :param address_space: ``RLIMIT_AS`` in bytes.
    :param cpu_seconds: ``RLIMIT_CPU`` soft limit in seconds (SIGXCPU); the hard limit is a
        few seconds later (SIGKILL).
    :param timeout: wall-clock seconds before the process is killed; ``None`` waits forever.
    """

    address_space: int
    cpu_seconds: int
    timeout: float | None


#: glibc reserves up to 64 MiB of address space per malloc arena, up to 8 arenas per CPU;
#: capping the arenas keeps qemu-img's threads inside :attr:`Limits.address_space`.
_CHILD_ENV = {"MALLOC_ARENA_MAX": "2", "LC_ALL": "C"}


@dataclass(frozen=True)
class Completed:
    """A qemu-img process that exited with an accepted status."""

    argv: tuple[str, ...]
    returncode: int
    #: Standard output (empty when it was fed to a progress parser instead).
    stdout: str
    stderr: str


@cache
def _tools() -> tuple[str, str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise HostError("prlimit (util-linux) not found: corral runs qemu-img under limits")
    qemu_img = shutil.which(QEMU_IMG)
    if qemu_img is None:
        raise HostError("qemu-img not found: install qemu-utils")
    return prlimit, qemu_img


def limited_argv(argv: Sequence[str], limits: Limits, prlimit: str = "prlimit") -> list[str]:
    """``argv`` behind ``prlimit``: address space, CPU time, no core file.

    :param argv: the command.
    :param limits: its limits.
    :param prlimit: the prlimit binary.
    """
    cpu_hard = limits.cpu_seconds + 5
    return [
        prlimit,
        f"--as={limits.address_space}",
        f"--cpu={limits.cpu_seconds}:{cpu_hard}",
        "--core=0",
        "--",
        *argv,
    ]


def _death_note(returncode: int, limits: Limits) -> str:
    if returncode >= 0:
        return ""
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGXCPU:
        return f"killed by {name}: CPU time limit of {limits.cpu_seconds} s exceeded"
    if signum == signal.SIGABRT:
        return f"killed by {name}: it aborted (address space limit {limits.address_space} bytes?)"
    return f"killed by {name}"


class _Output:
    """Collects one process's output: stderr's tail, and stdout kept or fed to a parser."""

    def __init__(
        self, argv: Sequence[str], limits: Limits, progress: ProgressCallback | None
    ) -> None:
        self.argv = argv
        self.limits = limits
        self.progress = progress
        self.parser = ProgressParser()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.out = bytearray()
        self.err = bytearray()

    def timed_out(self) -> ToolError:
        note = f"no result within {self.limits.timeout:g} s: killed"
        return ToolError(self.argv, -signal.SIGKILL, f"{self.stderr}\n{note}")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def take(self, chunk: bytes, is_stderr: bool) -> None:
        if is_stderr:
            self.err += chunk
            del self.err[:-MAX_STDERR]
        elif self.progress is not None:
            for percent in self.parser.feed(self.decoder.decode(chunk)):
                self.progress(percent / 100.0)
        else:
            self.out += chunk
            if len(self.out) > MAX_STDOUT:
                note = f"more than {MAX_STDOUT} bytes of output: killed"
                raise ToolError(self.argv, -signal.SIGKILL, note)

    def pump(self, proc: subprocess.Popen[bytes], deadline: float | None) -> int:
        """Read both pipes until they close, then reap; returns the exit status."""
        assert proc.stdout is not None
        assert proc.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, False)
            selector.register(proc.stderr, selectors.EVENT_READ, True)
            while selector.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self.timed_out()
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self.take(chunk, bool(key.data))
                    else:
                        selector.unregister(key.fileobj)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return proc.wait(remaining)
        except subprocess.TimeoutExpired:
            raise self.timed_out() from None


def run(
    argv: Sequence[str],
    limits: Limits,
    *,
    ok_codes: Collection[int] = (0,),
    progress: ProgressCallback | None = None,
    pass_fds: Sequence[int] = (),
) -> Completed:
    """Run one qemu-img command under ``limits``; the only function here that does I/O.

    The process is killed (and reaped) if it runs past the timeout, prints too much, or the
    caller is interrupted (``KeyboardInterrupt``, an exception from ``progress``).

    :param argv: a command from one of the builders.
    :param limits: resource limits and timeout.
    :param ok_codes: exit statuses that are not failures.
    :param progress: if given, standard output is parsed as ``-p`` records and each new
        fraction done (percentage / 100) is passed to it instead of being kept; 1.0 is
        passed last on success.
    :param pass_fds: file descriptors the process inherits (for ``/dev/fd/N`` names).
    :raise ToolError: another exit status, death by a signal, a timeout or runaway output.
    :raise HostError: qemu-img or prlimit is not installed.
    """
    prlimit, qemu_img = _tools()
    command = [qemu_img, *argv[1:]] if argv and argv[0] == QEMU_IMG else list(argv)
    deadline = None if limits.timeout is None else time.monotonic() + limits.timeout
    output = _Output(argv, limits, progress)
    proc = subprocess.Popen(
        limited_argv(command, limits, prlimit),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        env={**os.environ, **_CHILD_ENV},
    )
    try:
        returncode = output.pump(proc, deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if returncode not in ok_codes:
        note = _death_note(returncode, limits)
        stderr = output.stderr
        raise ToolError(argv, returncode, f"{stderr}\n{note}" if note else stderr)
    if progress is not None and output.parser.last < 100.0:
        progress(1.0)
    return Completed(tuple(argv), returncode, output.out.decode(errors="replace"), output.stderr)
