"""``corral console``: an interactive serial console over the VM's UNIX socket."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import termios
import tty

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.state import Op, require
from corral.errors import CorralError

#: Ctrl-], as in virsh and telnet.
ESCAPE = b"\x1d"


def attach(ctx: Corral, name: str) -> None:
    """Connect the terminal to VM ``name``'s serial console until Ctrl-] or the VM stops.

    :raise StateError: the VM is not running.
    :raise CorralError: the console is in use by another client or disabled.
    """
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        require(name, Op.CONSOLE, vm.state)
        if not vm.spec.serial.enabled:
            raise CorralError(f"vm {name!r} has no serial console")
        path = vm.paths.serial_socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        raise CorralError(f"vm {name!r}: cannot attach to the serial console: {exc}") from exc
    sys.stderr.write(f"Connected to {name} (escape character is ^])\r\n")
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    try:
        if interactive:
            tty.setraw(stdin)
        _pump(sock, stdin, sys.stdout.fileno())
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
    sys.stderr.write(f"\nDisconnected from {name}\n")


def _pump(sock: socket.socket, stdin: int, stdout: int) -> None:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(stdin, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(stdout, data)
            else:
                data = os.read(stdin, 4096)
                if not data:
                    return
                if ESCAPE in data:
                    with contextlib.suppress(OSError):
                        sock.sendall(data.split(ESCAPE, 1)[0])
                    return
                sock.sendall(data)
