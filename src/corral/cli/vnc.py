"""``corral vnc``: a VM's VNC display on a loopback port of this machine, for any VNC viewer.

Each connection to the port gets its own single-use ticket and websocket
(``/vms/{name}/vnc``), so the display is reached the same way from the daemon's host and from
afar (``corral login``); nothing of the VM's listens on the network.
"""

from __future__ import annotations

import contextlib
import socket
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
) -> None:
    """Show a running VM's VNC display on 127.0.0.1:PORT, for a VNC viewer (Ctrl-C stops)."""
    with open_client() as api:
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
