"""``corral vnc``: a VM's VNC display on a loopback port of this machine, for any VNC viewer.

Each connection to the port gets its own single-use ticket and websocket
(``/vms/{name}/vnc``), so the display is reached the same way from the daemon's host and from
afar (``corral login``); nothing of the VM's listens on the network.

``--enable``/``--disable`` give a stopped VM a VNC display or take it away (``PATCH
/vms/{name}`` with ``display``); ``--password-stdin`` sets its VNC password (``POST
/vms/{name}/vnc/password``), read from standard input so that it is never on a command line.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from corral.client import Client

Name = Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")]
#: Bytes read from a viewer at a time.
CHUNK = 65536


def vnc_cmd(
    name: Name,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Loopback port to listen on (0: any free one).")
    ] = 0,
    once: Annotated[bool, typer.Option("--once", help="Serve one viewer, then exit.")] = False,
    ticket: Annotated[
        bool,
        typer.Option(
            "--ticket", help="Print a single-use websocket path (for noVNC) instead, and exit."
        ),
    ] = False,
    enable: Annotated[
        bool | None,
        typer.Option(
            "--enable/--disable",
            help="Give the VM a VNC display, or take it away, from its next start (the VM must "
            "be stopped); then exit.",
        ),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the VNC password (1-8 characters) from standard input and set it; then "
            "exit. A running VM gets it at once.",
        ),
    ] = False,
    expires: Annotated[
        int | None,
        typer.Option(min=1, help="With --password-stdin: seconds until it expires (running VM)."),
    ] = None,
    clear_password: Annotated[
        bool,
        typer.Option(
            "--clear-password", help="Remove the VNC password (the VM must be stopped); then exit."
        ),
    ] = False,
) -> None:
    """Show a running VM's VNC display on 127.0.0.1:PORT, for a VNC viewer (Ctrl-C stops);
    or change it: --enable/--disable, --password-stdin, --clear-password."""
    if expires is not None and not password_stdin:
        raise typer.BadParameter("needs --password-stdin", param_hint="--expires")
    with open_client() as api:
        if enable is not None or password_stdin or clear_password:
            configure(api, name, enable, password_stdin, expires, clear_password)
            return
        if ticket:
            issued = api.vnc_ticket(name)
            print(issued.path)
            return
        api.vnc_ticket(name)  # refused now, not when the first viewer connects
        with socket.create_server(("127.0.0.1", port)) as server:
            bound = server.getsockname()[1]
            print(f"127.0.0.1:{bound}", flush=True)
            render.err.print(
                f"VNC display of {name} on 127.0.0.1:{bound} (vncviewer 127.0.0.1::{bound}); "
                "Ctrl-C stops"
            )
            with contextlib.suppress(KeyboardInterrupt):
                serve(api, name, server, once)


def configure(
    api: Client,
    name: str,
    enable: bool | None,
    password_stdin: bool,
    expires: int | None,
    clear_password: bool,
) -> None:
    """Change VM ``name``'s display as the options ask: display first, then its password."""
    from corral.api.schemas.vms import VmUpdate

    if enable is not None:
        api.update_vm(name, VmUpdate(display="vnc" if enable else "none"))
        render.err.print(f"{name}: VNC display {'enabled' if enable else 'disabled'}")
    if clear_password:
        api.clear_vnc_password(name)
        render.err.print(f"{name}: VNC password removed")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        done = api.set_vnc_password(name, password, expires)
        when = "now and from the next start" if done.live else "from the next start"
        render.err.print(f"{name}: VNC password set ({when})")


def serve(api: Client, name: str, server: socket.socket, once: bool) -> None:
    """Bridge each viewer that connects to ``server`` to the VM's VNC websocket."""
    while True:
        conn, _ = server.accept()
        viewer = threading.Thread(
            target=_viewer, args=(api, name, conn), name="vnc-viewer", daemon=not once
        )
        viewer.start()
        if once:
            viewer.join()
            return


def _viewer(api: Client, name: str, conn: socket.socket) -> None:
    from corral.errors import CorralError

    with conn:
        try:
            display = api.open_vnc(name)
        except CorralError as exc:
            render.err.print(f"viewer refused: {exc.message}")
            return
        with display:
            bridge(conn, display)


def bridge(conn: socket.socket, display: ClientConnection) -> None:
    """Copy bytes between a viewer's socket and the display's websocket until either ends."""
    from websockets.exceptions import ConnectionClosed

    def down() -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            for message in display:
                conn.sendall(message if isinstance(message, bytes) else message.encode())
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    receiver = threading.Thread(target=down, name="vnc-display", daemon=True)
    receiver.start()
    with contextlib.suppress(ConnectionClosed, OSError):
        while data := conn.recv(CHUNK):
            display.send(data)
    display.close()
    receiver.join(timeout=5)
