"""The terminal of a QEMU that draws its display with ``curses``.

QEMU's ``curses`` display draws on QEMU's own terminal, and corral runs QEMU detached, with
none. For such a VM a small holder process sits between ``setsid`` and QEMU's supervisor: it
opens a pseudo-terminal, starts the supervisor (and so QEMU) in a new session with the
terminal's slave side as its controlling terminal, and keeps the master side for as long as
QEMU runs, so that QEMU's screen outlives every client and corrald itself. It listens on the
VM's ``text.sock`` (mode 0600, inside the VM's directory) for one client at a time; a new
client takes over from the previous one (as ``virsh console --force`` does), and nothing of
the terminal listens anywhere else. With no client attached, QEMU's output is read and
dropped, so QEMU never blocks on a full terminal; a client that attaches gets a whole redraw
(:func:`redraw_sizes`).

What a client sends is framed (:func:`frame`): keyboard bytes, or a window size that the
holder sets on the terminal (the kernel sends QEMU ``SIGWINCH`` and curses redraws). What it
receives is the terminal's output, byte for byte.

Run as ``python -m corral.qemu.ptyholder SOCKET -- COMMAND...``; the holder ends when
COMMAND ends, with its status.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import sys
import termios
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: A frame's header: its kind (one byte) and its payload's length (big-endian, four bytes).
_HEADER = struct.Struct(">cI")
#: Keyboard bytes, to be written to the terminal.
DATA = b"d"
#: A window size: rows and columns, two big-endian unsigned shorts.
WINSIZE = b"w"
_SIZE = struct.Struct(">HH")
#: The terminal's size until a client says otherwise: a VGA text screen.
DEFAULT_SIZE = (25, 80)
#: Largest frame payload a client may send.
MAX_FRAME = 65536
#: Bytes read from the terminal or a client at a time.
CHUNK = 65536
#: Seconds a client may take to accept output before it is dropped.
SEND_TIMEOUT = 5.0
#: The environment QEMU's curses display needs on top of the supervisor's own.
TERMINAL_ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


class FrameError(ValueError):
    """A client sent something that is not a frame of this protocol."""


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame of ``kind`` (:data:`DATA` or :data:`WINSIZE`) carrying ``payload``."""
    return _HEADER.pack(kind, len(payload)) + payload


def data_frame(keys: bytes) -> bytes:
    """A frame of keyboard bytes."""
    return frame(DATA, keys)


def size_frame(rows: int, columns: int) -> bytes:
    """A frame that sets the terminal to ``rows`` x ``columns`` (each clamped to 1-65535)."""
    return frame(WINSIZE, _SIZE.pack(_clamp(rows), _clamp(columns)))


def _clamp(value: int) -> int:
    return max(1, min(65535, value))


@dataclass
class Frames:
    """Frames cut from a client's byte stream, however it arrives in pieces."""

    pending: bytes = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The whole frames ``chunk`` completes, as (kind, payload).

        :raise FrameError: an unknown kind, an oversized frame or a bad window size.
        """
        self.pending += chunk
        while len(self.pending) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self.pending)
            if kind not in (DATA, WINSIZE) or length > MAX_FRAME:
                raise FrameError(f"bad frame header {self.pending[: _HEADER.size]!r}")
            if kind == WINSIZE and length != _SIZE.size:
                raise FrameError(f"window size of {length} bytes")
            end = _HEADER.size + length
            if len(self.pending) < end:
                return
            payload, self.pending = self.pending[_HEADER.size : end], self.pending[end:]
            yield kind, payload


def window_size(payload: bytes) -> tuple[int, int]:
    """The (rows, columns) of a :data:`WINSIZE` payload."""
    rows, columns = _SIZE.unpack(payload)
    return _clamp(rows), _clamp(columns)


def redraw_sizes(rows: int, columns: int) -> list[tuple[int, int]]:
    """The sizes to set, in turn, to make curses redraw a whole ``rows`` x ``columns`` screen.

    curses redraws everything on a change of size only; an attaching client may well have
    the size the terminal already has, so the terminal goes one column narrower first.
    """
    return [(rows, columns - 1 if columns > 1 else columns + 1), (rows, columns)]


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def _start(command: Sequence[str], slave: int, master: int) -> int:
    """Fork ``command`` in a new session whose controlling terminal is ``slave``."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns
        os.setsid()
        os.close(master)
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        os.dup2(slave, 0)
        os.dup2(slave, 1)
        if slave > 2:
            os.close(slave)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execvpe(command[0], list(command), {**os.environ, **TERMINAL_ENV})  # noqa: S606
    finally:
        os._exit(127)


class Holder:
    """The master side of QEMU's terminal and the one client attached to it."""

    def __init__(self, master: int, listener: socket.socket) -> None:
        self.master = master
        self.listener = listener
        self.client: socket.socket | None = None
        self.frames = Frames()
        self.size = DEFAULT_SIZE
        self.selector = selectors.DefaultSelector()
        self.selector.register(master, selectors.EVENT_READ)
        self.selector.register(listener, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until QEMU closes its terminal."""
        while True:
            for key, _ in self.selector.select():
                if key.fileobj == self.master:
                    if not self._from_terminal():
                        return
                elif key.fileobj is self.listener:
                    self._accept()
                else:
                    self._from_client()

    def _from_terminal(self) -> bool:
        try:
            data = os.read(self.master, CHUNK)
        except OSError:  # EIO: every holder of the slave side has gone
            return False
        if not data:
            return False
        if self.client is not None:
            try:
                self.client.sendall(data)
            except OSError:
                self._drop()
        return True

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        if self.client is not None:
            with contextlib.suppress(OSError):
                self.client.sendall(b"\r\n[corral: another client attached]\r\n")
            self._drop()
        client.settimeout(SEND_TIMEOUT)
        self.client = client
        self.frames = Frames()
        self.selector.register(client, selectors.EVENT_READ)

    def _from_client(self) -> None:
        assert self.client is not None
        try:
            chunk = self.client.recv(CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            self._drop()
            return
        try:
            for kind, payload in self.frames.feed(chunk):
                if kind == DATA:
                    os.write(self.master, payload)
                else:
                    self.size = window_size(payload)
                    for rows, columns in redraw_sizes(*self.size):
                        _set_size(self.master, rows, columns)
        except FrameError:
            self._drop()

    def _drop(self) -> None:
        if self.client is None:
            return
        self.selector.unregister(self.client)
        with contextlib.suppress(OSError):
            self.client.close()
        self.client = None


def serve(socket_path: str, command: Sequence[str]) -> int:
    """Run ``command`` on a new terminal served on ``socket_path``; its exit status.

    :raise OSError: the socket cannot be made.
    """
    master, slave = os.openpty()
    _set_size(master, *DEFAULT_SIZE)
    Path(socket_path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(socket_path)
    finally:
        os.umask(old)
    listener.listen(4)
    os.set_inheritable(listener.fileno(), False)
    pid = _start(command, slave, master)
    os.close(slave)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        Holder(master, listener).run()
    finally:
        listener.close()
        Path(socket_path).unlink(missing_ok=True)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str]) -> int:
    """``ptyholder SOCKET -- COMMAND...``."""
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m corral.qemu.ptyholder SOCKET -- COMMAND...\n")
        return 2
    return serve(argv[0], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
