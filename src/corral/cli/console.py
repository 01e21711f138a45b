"""``corral console``: an interactive serial console, or with ``--text`` the text display of
a VM whose display is ``curses``, through the API's websocket.

It works the same against the local daemon (its UNIX socket) and a remote one (``corral
login``): the daemon bridges the websocket to the VM's ``serial.sock`` or ``text.sock``. The
text display follows the terminal's size: it is sent on attaching and on every ``SIGWINCH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
import termios
import threading
import tty
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from corral.client.api import Client

#: Ctrl-], as in virsh and telnet.
ESCAPE = b"\x1d"


def attach(client: Client, name: str, text: bool = False) -> None:
    """Connect the terminal to VM ``name``'s serial console (or with ``text`` its text
    display) until Ctrl-] or the VM stops.

    :raise ApiError: the daemon refused (the VM is not running, not the caller's, ...).
    :raise HostError: the daemon cannot be reached.
    """
    connection = client.open_console(name, text)
    sys.stderr.write(f"Connected to {name} (escape character is ^])\r\n")
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    wake: tuple[int, int] | None = None
    try:
        if interactive:
            tty.setraw(stdin)
        if text and os.isatty(stdout):
            wake = _follow_size(connection, stdout)
        pump(connection, stdin, stdout, wake[0] if wake else None)
    finally:
        if wake is not None:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            for fd in wake:
                os.close(fd)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        connection.close()
    sys.stderr.write(f"\nDisconnected from {name}\n")


def size_message(terminal: int) -> str:
    """The text frame that tells the text display the size of ``terminal``."""
    size = os.get_terminal_size(terminal)
    return json.dumps({"rows": size.lines, "columns": size.columns})


def _follow_size(connection: ClientConnection, terminal: int) -> tuple[int, int]:
    """Send ``terminal``'s size now; a pipe that becomes readable on each ``SIGWINCH``."""
    connection.send(size_message(terminal))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGWINCH, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    return wake_r, wake_w


def pump(connection: ClientConnection, stdin: int, stdout: int, resized: int | None = None) -> None:
    """Copy ``stdin`` to the console and the console to ``stdout`` until Ctrl-] on ``stdin``,
    the end of ``stdin``, or the end of the console; whenever ``resized`` becomes readable,
    send ``stdout``'s new size."""
    ended_r, ended_w = os.pipe()

    def receive() -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in connection:
                os.write(stdout, message if isinstance(message, bytes) else message.encode())
        except (ConnectionClosed, OSError):
            pass
        finally:
            os.write(ended_w, b"x")

    receiver = threading.Thread(target=receive, name="console-receive", daemon=True)
    receiver.start()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ)
    sel.register(ended_r, selectors.EVENT_READ)
    if resized is not None:
        sel.register(resized, selectors.EVENT_READ)
    try:
        while True:
            ready = {key.fd for key, _ in sel.select()}
            if ended_r in ready:
                return
            if resized is not None and resized in ready:
                os.read(resized, 512)
                connection.send(size_message(stdout))
            if stdin not in ready:
                continue
            data = os.read(stdin, 4096)
            if not data:
                return
            if ESCAPE in data:
                with contextlib.suppress(Exception):
                    connection.send(data.split(ESCAPE, 1)[0])
                return
            connection.send(data)
    finally:
        sel.close()
        connection.close()
        receiver.join(timeout=5)
        os.close(ended_r)
        os.close(ended_w)
