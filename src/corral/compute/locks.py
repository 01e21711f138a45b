"""Per-object locks across processes: two commands on one VM never interleave."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from corral.errors import Busy


class ObjectLock:
    """An exclusive ``flock`` on ``<locks>/<kind>-<name>.lock``.

    The kernel drops the lock when its holder dies, so a killed command never leaves it held.

    :param wait: seconds to wait for another holder before raising :class:`Busy`.
    """

    def __init__(self, locks_dir: Path, kind: str, name: str, wait: float = 120.0) -> None:
        self.path = locks_dir / f"{kind}-{name}.lock"
        self.kind = kind
        self.name = name
        self.wait = wait
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free now."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` seconds.

        :raise Busy: another command still holds it.
        """
        deadline = time.monotonic() + self.wait
        delay = 0.005
        while not self.try_acquire():
            if time.monotonic() > deadline:
                raise Busy(self.kind, self.name, self.wait)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ObjectLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
