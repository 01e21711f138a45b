"""``corral console``: an interactive serial console through the API's websocket.

It works the same against the local daemon (its UNIX socket) and a remote one (``corral
login``): the daemon bridges the websocket to the VM's ``serial.sock``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
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


def attach(client: Client, name: str) -> None:
    """Connect the terminal to VM ``name``'s serial console until Ctrl-] or the VM stops.

    :raise ApiError: the daemon refused (the VM is not running, not the caller's, ...).
    :raise HostError: the daemon cannot be reached.
    """
    connection = client.open_console(name)
    sys.stderr.write(f"Connected to {name} (escape character is ^])\r\n")
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    try:
        if interactive:
            tty.setraw(stdin)
        pump(connection, stdin, sys.stdout.fileno())
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        connection.close()
    sys.stderr.write(f"\nDisconnected from {name}\n")


def pump(connection: ClientConnection, stdin: int, stdout: int) -> None:
    """Copy ``stdin`` to the console and the console to ``stdout`` until Ctrl-] on ``stdin``,
    the end of ``stdin``, or the end of the console."""
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
    try:
        while not any(key.fd == ended_r for key, _ in sel.select()):
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
