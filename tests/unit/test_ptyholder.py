"""The terminal holder of a ``curses`` display: its framing (pure), and a real holder on a
real pseudo-terminal running a shell in place of QEMU."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.qemu import ptyholder
from corral.qemu.ptyholder import (
    DATA,
    WINSIZE,
    FrameError,
    Frames,
    data_frame,
    redraw_sizes,
    size_frame,
    window_size,
)


def test_frames_are_cut_from_a_stream_in_any_pieces() -> None:
    stream = data_frame(b"ls\r") + size_frame(30, 100) + data_frame(b"")
    frames = Frames()
    got = [f for byte in stream for f in frames.feed(bytes([byte]))]
    assert got == [(DATA, b"ls\r"), (WINSIZE, size_frame(30, 100)[5:]), (DATA, b"")]
    assert window_size(got[1][1]) == (30, 100)
    assert frames.pending == b""


def test_a_size_is_clamped_and_a_bad_frame_refused() -> None:
    assert window_size(size_frame(0, 70000)[5:]) == (1, 65535)
    with pytest.raises(FrameError, match="bad frame header"):
        list(Frames().feed(b"x\x00\x00\x00\x01a"))
    with pytest.raises(FrameError, match="bad frame header"):
        list(Frames().feed(DATA + (10**6).to_bytes(4, "big")))
    with pytest.raises(FrameError, match="window size of 3 bytes"):
        list(Frames().feed(WINSIZE + b"\x00\x00\x00\x03abc"))


def test_a_redraw_changes_the_size_and_ends_on_the_asked_one() -> None:
    assert redraw_sizes(25, 80) == [(25, 79), (25, 80)]
    assert redraw_sizes(25, 1) == [(25, 2), (25, 1)]


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    seen = b""
    sock.settimeout(30)
    while marker not in seen:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}: {seen!r}"
        seen += chunk
    return seen


def test_a_holder_serves_its_commands_terminal_and_ends_with_it(tmp_path: Path) -> None:
    path = tmp_path / "text.sock"
    # The command stands in for QEMU: it reads a line from its terminal and reports the
    # terminal's size, then exits with a status of its own.
    script = (
        'while read line; do echo "got=$line size=$(stty size)"; [ $line = bye ] && exit 7; done'
    )
    holder = subprocess.Popen(
        [sys.executable, "-I", ptyholder.__file__, str(path), "--", "sh", "-c", script]
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.01)
        assert path.stat().st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            client.sendall(size_frame(33, 111) + data_frame(b"hello\n"))
            assert b"got=hello size=33 111" in _read_until(client, b"size=33 111")
        with socket.socket(socket.AF_UNIX) as client:  # a later client, the same terminal
            client.connect(str(path))
            client.sendall(data_frame(b"bye\n"))
            assert b"got=bye size=33 111" in _read_until(client, b"got=bye")
        assert holder.wait(timeout=30) == 7
        assert not path.exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
