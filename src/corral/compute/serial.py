"""Reading a guest's serial console log: waiting for markers with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from corral.errors import CorralError, GuestTimeout
from corral.qemu.process import tail


def log_size(path: str) -> int:
    """Current size of the serial log (0 if it does not exist yet)."""
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0


def wait_for_line(
    vm: str,
    log: str,
    marker: str,
    offset: int,
    timeout: float,
    alive: Callable[[], bool],
    interval: float = 0.05,
) -> float:
    """Wait until a line equal to ``marker`` appears in ``log`` after byte ``offset``.

    :param alive: called between reads; when it says the guest is gone, waiting stops.
    :return: seconds waited.
    :raise GuestTimeout: no marker within ``timeout`` (carries the last console lines).
    :raise CorralError: the guest's QEMU exited while waiting.
    """
    start = time.monotonic()
    deadline = start + timeout
    wanted = marker.encode()
    pending = b""
    position = offset
    path = Path(log)
    while True:
        try:
            with path.open("rb") as f:
                f.seek(0, 2)
                if f.tell() < position:  # rotated or truncated: read it from the start
                    position = 0
                f.seek(position)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            position += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if any(line.rstrip(b"\r") == wanted for line in lines):
                return time.monotonic() - start
        if time.monotonic() > deadline:
            raise GuestTimeout(vm, f"{marker!r} on the serial console", timeout, tail(path))
        if not alive():
            last = "; ".join(tail(path, 3)) or "no console output"
            raise CorralError(f"vm {vm!r}: QEMU exited while waiting for {marker!r} ({last})")
        time.sleep(interval)
