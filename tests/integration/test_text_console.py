"""The text display (``display curses``) through a real corrald: QEMU draws its VGA text
screen with curses on the terminal its holder keeps, the websocket carries that terminal's
output to a VT100 emulator (pyte) that must show the firmware's screen with this VM's own
machine UUID, and keys typed on the text display reach a shell the guest runs on its first
virtual terminal (which answers on the serial console: the reference guest boots its kernel
directly, without a VGA text console of its own). ``corral console --text`` does the same
from a real pseudo-terminal and gives QEMU's terminal its size. The holder takes over from an
earlier client and goes with QEMU.
"""

from __future__ import annotations

import contextlib
import os
import pty
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyte
import pytest

from corral.api.schemas import VmCreate
from corral.client.api import ApiError, Client
from corral.errors import CorralError
from corral.qemu.ptyholder import size_frame
from tests.integration.conftest import CORRAL

pytestmark = [pytest.mark.tcg, pytest.mark.slow]

ROWS, COLUMNS = 25, 80


@pytest.fixture
def text_vm(client: Client) -> Iterator[str]:
    """A running VM whose display is curses; destroyed and deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create_vm(VmCreate(name=name, image="reference", memory="256M", display="curses"))
    try:
        assert client.wait_task(client.start_vm(name).id).status == "success"
        yield name
    finally:
        with contextlib.suppress(CorralError):
            client.wait_task(client.vm_action(name, "destroy").id)
        client.wait_task(client.delete_vm(name).id)


class Screen:
    """A terminal emulator fed by a stream of terminal output, read in a thread."""

    def __init__(self, rows: int = ROWS, columns: int = COLUMNS) -> None:
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.chunks: queue.Queue[bytes] = queue.Queue()

    def pump(self, source: Iterator[bytes | str]) -> None:
        def read() -> None:
            with contextlib.suppress(Exception):
                for chunk in source:
                    self.chunks.put(chunk if isinstance(chunk, bytes) else chunk.encode())

        threading.Thread(target=read, daemon=True).start()

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(
        self, marker: str, timeout: float = 60, poke: Callable[[], None] | None = None
    ) -> None:
        """Until ``marker`` is on the screen; ``poke`` is called about every second meanwhile."""
        deadline = time.monotonic() + timeout
        next_poke = 0.0
        while marker not in self.text():
            assert time.monotonic() < deadline, f"no {marker!r} on the screen:\n{self.text()}"
            if poke is not None and time.monotonic() >= next_poke:
                poke()
                next_poke = time.monotonic() + 1.0
            with contextlib.suppress(queue.Empty):
                self.stream.feed(self.chunks.get(timeout=0.1))


class Serial:
    """``name``'s serial console (its shell): lines typed, and everything it printed."""

    def __init__(self, client: Client, name: str) -> None:
        self.console = client.open_console(name)
        self.seen = b""
        self.chunks: queue.Queue[bytes] = queue.Queue()

        def read() -> None:
            with contextlib.suppress(Exception):
                for chunk in self.console:
                    self.chunks.put(chunk if isinstance(chunk, bytes) else chunk.encode())

        threading.Thread(target=read, daemon=True).start()

    def __enter__(self) -> Serial:
        return self

    def __exit__(self, *_: object) -> None:
        self.console.close()

    def type(self, line: bytes) -> None:
        self.console.send(line)

    def wait_for(self, marker: bytes, poke: Callable[[], object], timeout: float = 60) -> None:
        """Until ``marker`` was printed; ``poke`` is called about every second meanwhile."""
        deadline = time.monotonic() + timeout
        next_poke = 0.0
        while marker not in self.seen:
            assert time.monotonic() < deadline, f"no {marker!r} in {self.seen[-400:]!r}"
            if time.monotonic() >= next_poke:
                poke()
                next_poke = time.monotonic() + 1.0
            with contextlib.suppress(queue.Empty):
                self.seen += self.chunks.get(timeout=0.1)

    def shell_on_tty1(self) -> None:
        """Start a shell on the guest's first virtual terminal (its keyboard's)."""
        self.wait_for(b"SHELL-42-UP", lambda: self.type(b"echo SHELL-$((6*7))-UP\n"))
        self.type(b"setsid sh -c 'exec sh </dev/tty1 >/dev/tty1 2>&1' &\n")


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, CORRAL_HOME=str(home))
    for remote in ("CORRAL_URL", "CORRAL_TOKEN"):
        env.pop(remote, None)
    return env


def test_the_text_display_shows_the_guests_screen_and_takes_its_keys(
    corral_home: Path, client: Client, text_vm: str
) -> None:
    holder = corral_home / "vms" / text_vm / "text.sock"
    assert holder.is_socket() and (holder.stat().st_mode & 0o777) == 0o600
    machine = client.get_vm(text_vm).uuid
    screen = Screen()
    with Serial(client, text_vm) as serial, client.open_console(text_vm, text=True) as display:
        serial.shell_on_tty1()
        display.send(f'{{"rows": {ROWS}, "columns": {COLUMNS}}}')
        screen.pump(iter(display))
        # The firmware's screen, drawn from the VGA text memory: this VM's own UUID is on it.
        screen.wait_for("SeaBIOS")
        screen.wait_for(f"Machine UUID {machine}")
        # Keys typed on the text display reach the guest's keyboard; the answer is computed
        # by the guest's shell on tty1 and printed on its serial console.
        serial.wait_for(b"KEY-42-OK", lambda: display.send(b"echo KEY-$((6*7))-OK > /dev/ttyS0\r"))


def test_a_second_client_takes_over_and_the_holder_goes_with_qemu(
    corral_home: Path, client: Client, text_vm: str
) -> None:
    import socket

    path = str(corral_home / "vms" / text_vm / "text.sock")
    first = socket.socket(socket.AF_UNIX)
    first.connect(path)
    first.settimeout(60)
    with socket.socket(socket.AF_UNIX) as second:
        second.connect(path)
        second.sendall(size_frame(ROWS, COLUMNS))
        seen = b""
        while b"another client attached" not in seen:
            chunk = first.recv(4096)
            assert chunk, f"closed without a word: {seen[-200:]!r}"
            seen += chunk
        assert first.recv(4096) == b""  # and then closed
    first.close()
    assert client.wait_task(client.vm_action(text_vm, "destroy").id).status == "success"
    assert not Path(path).exists()
    with pytest.raises(ApiError) as refused:
        client.open_console(text_vm, text=True)
    assert refused.value.status == 409


def test_a_vm_without_a_text_display_is_refused_naming_its_display(
    corral_home: Path, client: Client
) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create_vm(VmCreate(name=name, image="reference", memory="256M"))
    try:
        assert client.wait_task(client.start_vm(name).id).status == "success"
        with pytest.raises(ApiError) as refused:
            client.open_console(name, text=True)
        assert refused.value.status == 409
        assert "no text display" in refused.value.message and "'none'" in refused.value.message
    finally:
        with contextlib.suppress(CorralError):
            client.wait_task(client.vm_action(name, "destroy").id)
        client.wait_task(client.delete_vm(name).id)


def test_corral_console_text_draws_on_a_real_terminal_and_detaches(
    corral_home: Path, client: Client, text_vm: str
) -> None:
    rows, columns = 30, 100
    pid, terminal = pty.fork()
    if pid == 0:  # the child: corral console --text on the pseudo-terminal
        os.execvpe(CORRAL, [CORRAL, "console", text_vm, "--text"], _env(corral_home))
    try:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        screen = Screen(rows, columns)

        def output() -> Iterator[bytes]:
            with contextlib.suppress(OSError):
                while chunk := os.read(terminal, 4096):
                    yield chunk

        screen.pump(output())
        with Serial(client, text_vm) as serial:
            serial.shell_on_tty1()
            screen.wait_for(f"Machine UUID {client.get_vm(text_vm).uuid}")
            serial.wait_for(
                b"CLI-42-OK", lambda: os.write(terminal, b"echo CLI-$((6*7))-OK > /dev/ttyS0\r")
            )
        # QEMU's terminal has the size of the terminal corral console runs on.
        assert _qemu_terminal_size(corral_home, text_vm) == (rows, columns)
        os.write(terminal, b"\x1d")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(terminal)


def _qemu_terminal_size(home: Path, name: str) -> tuple[int, int]:
    """The (rows, columns) of the terminal QEMU draws on, as the kernel has it."""
    import fcntl
    import struct
    import termios

    pid = int((home / "vms" / name / "qemu.pid").read_text())
    fd = os.open(f"/proc/{pid}/fd/1", os.O_RDONLY | os.O_NOCTTY)
    try:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    finally:
        os.close(fd)
    return rows, columns
