"""``/vms/{name}/console`` and ``/vms/{name}/vnc``: a VM's serial console, its text display
and its VNC display as websockets, bytes both ways.

``/vms/{name}/console?kind=text`` is the terminal of a VM whose display is ``curses``: binary
frames carry the keyboard, a text frame ``{"rows": R, "columns": C}`` sets the terminal's
size (curses redraws the whole screen), and what comes back is the terminal's output.

The serial console is authenticated as every endpoint is (``Authorization: Bearer`` over TCP,
the local administrator on the UNIX socket). The VNC websocket takes a single-use ticket in
its query instead (``POST /vms/{name}/vnc/token``), since a browser opens a websocket without
an ``Authorization`` header; noVNC's ``binary`` subprotocol is accepted.

A refusal comes before the websocket is accepted, as an HTTP answer in the shape of every
error (401, 403, 404, 409), where the server can send one; otherwise the handshake is closed
with code 1008 and the message as its reason.

The bridge is corrald's own, on Starlette's websocket: websockify's proxy is a server of its
own (``socketserver`` with its own HTTP handshake and threads), which an ASGI application
cannot host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from urllib.parse import quote

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.types import Message

from corral.access.principal import Principal
from corral.api.auth import LISTENER, PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import ERRORS, ErrorRead
from corral.api.schemas.consoles import VncPasswordCreate, VncPasswordRead, VncTicketRead
from corral.compute.consoles import (
    Endpoint,
    TicketBook,
    redeem_vnc,
    serial_endpoint,
    text_endpoint,
    vnc_ticket,
)
from corral.compute.context import Corral
from corral.errors import CorralError, HostError, InvalidInput, Unauthenticated
from corral.qemu.ptyholder import data_frame, size_frame

router = APIRouter(prefix="/vms", tags=["consoles"], responses=ERRORS)

#: Bytes read from a console socket at a time.
CHUNK = 65536
#: The websocket subprotocol noVNC asks for.
BINARY = "binary"
#: The websocket close code of a refused handshake (policy violation).
REFUSED = 1008


def tickets(state: State) -> TicketBook:
    """The application's VNC tickets (one book per application, made with it)."""
    book: TicketBook = state.vnc_tickets
    return book


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


@router.post(
    "/{name}/vnc/token",
    responses={
        403: _error("The caller's role may not operate the VM (viewers)."),
        404: _error("No such VM (or not the caller's)."),
        409: _error("The VM does not run (its state named), or has no VNC display."),
    },
)
def vnc_token(
    request: Request, ctx: CorralDep, principal: PrincipalDep, name: str
) -> VncTicketRead:
    """A single-use ticket, valid for a minute, that opens the VM's VNC websocket
    (``GET /vms/{name}/vnc?token=...``)."""
    ticket = vnc_ticket(ctx, principal, tickets(request.app.state), name)
    path = f"/api/v1/vms/{quote(name, safe='')}/vnc?token={ticket.secret}"
    return VncTicketRead(token=ticket.secret, vm=ticket.vm, expires_in=ticket.expires_in, path=path)


@router.post(
    "/{name}/vnc/password",
    responses={
        403: _error("The caller's role may not operate the VM (viewers)."),
        404: _error("No such VM (or not the caller's)."),
        409: _error(
            "The VM has no VNC display, or its state (named) forbids it: it runs without "
            "password auth (stop it first), or an expiry is asked of a VM that does not run."
        ),
        422: _error("The password is not 1 to 8 printable ASCII characters, or bad expires."),
    },
)
def set_vnc_password(
    ctx: CorralDep, principal: PrincipalDep, name: str, body: VncPasswordCreate
) -> VncPasswordRead:
    """Set the VM's VNC password: its display asks for it from the next start on, and at once
    if it runs with password auth. The password is kept in a file only corrald may read."""
    from corral.compute.vnc import set_vnc_password as set_password

    plan = set_password(ctx, principal, name, body.password, body.expires)
    return VncPasswordRead(vm=name, password_auth=True, live=plan.live)


@router.delete(
    "/{name}/vnc/password",
    responses={
        403: _error("The caller's role may not operate the VM (viewers)."),
        404: _error("No such VM (or not the caller's)."),
        409: _error("The VM has no VNC display, or runs (its state named): stop it first."),
    },
)
def clear_vnc_password(ctx: CorralDep, principal: PrincipalDep, name: str) -> VncPasswordRead:
    """Remove the VM's VNC password and password auth, from its next start on."""
    from corral.compute.vnc import clear_vnc_password as clear_password

    plan = clear_password(ctx, principal, name)
    return VncPasswordRead(vm=name, password_auth=False, live=plan.live)


@router.websocket("/{name}/console")
async def serial_console(websocket: WebSocket, name: str, kind: str = "serial") -> None:
    """The VM's serial console (``kind=serial``): what the guest writes, and what the client
    sends as its keyboard (binary or text frames); or the terminal of its ``curses`` display
    (``kind=text``)."""
    ctx: Corral = websocket.app.state.corral
    try:
        if kind not in ("serial", "text"):
            raise InvalidInput("kind", f"{kind[:40]!r} is not a console kind: serial or text")
        principal = await run_in_threadpool(_principal, ctx, websocket)
        find = text_endpoint if kind == "text" else serial_endpoint
        endpoint = await run_in_threadpool(find, ctx, principal, name)
        streams = await _open(endpoint, name)
    except CorralError as exc:
        await _refuse(websocket, exc)
        return
    await _bridge(websocket, *streams, encode=_terminal_frame if kind == "text" else _keys)


@router.websocket("/{name}/vnc")
async def vnc_display(websocket: WebSocket, name: str, token: str = "") -> None:
    """The VM's VNC display as an RFB stream, for the holder of a ticket."""
    ctx: Corral = websocket.app.state.corral
    try:
        endpoint = await run_in_threadpool(
            redeem_vnc, ctx, tickets(websocket.app.state), name, token
        )
        streams = await _open(endpoint, name)
    except CorralError as exc:
        await _refuse(websocket, exc)
        return
    await _bridge(websocket, *streams)


def _principal(ctx: Corral, websocket: WebSocket) -> Principal:
    """The principal of a websocket, as :func:`~corral.api.auth.get_principal` finds it.

    :raise Unauthenticated: not on the UNIX socket, and without a valid bearer token.
    """
    from corral.access.local import local_principal
    from corral.access.tokens import authenticate_token

    if websocket.scope.get(LISTENER) == "unix":
        return local_principal(ctx, os.geteuid())
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthenticated("no bearer token")
    return authenticate_token(ctx, credentials.strip())


async def _open(endpoint: Endpoint, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the console at ``endpoint``.

    :raise HostError: it cannot be reached (QEMU is gone or does not listen).
    """
    try:
        if endpoint.path is not None:
            return await asyncio.open_unix_connection(endpoint.path)
        return await asyncio.open_connection("127.0.0.1", endpoint.port)
    except OSError as exc:
        raise HostError(f"vm {name!r}: cannot reach {endpoint.describe()}: {exc}") from exc


async def _refuse(websocket: WebSocket, exc: CorralError) -> None:
    """Refuse the handshake with ``exc``: as an HTTP answer where the server can send one."""
    from corral.api.app import error_body

    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        answer = JSONResponse(error_body(exc), status_code=exc.status, headers=headers)
        await websocket.send_denial_response(answer)
    else:
        await websocket.close(REFUSED, reason=exc.message[:120])


def _keys(message: Message) -> bytes:
    """What a serial console's client sends, as bytes: binary frames, or text as UTF-8."""
    data = message.get("bytes")
    return data if data is not None else (message.get("text") or "").encode()


def _terminal_frame(message: Message) -> bytes:
    """What a text display's client sends, framed for the terminal holder: binary frames are
    keys, a text frame ``{"rows": R, "columns": C}`` a size (anything else is ignored)."""
    data = message.get("bytes")
    if data is not None:
        return data_frame(data)
    try:
        size = json.loads(message.get("text") or "")
        return size_frame(int(size["rows"]), int(size["columns"]))
    except (ValueError, TypeError, KeyError):
        return b""


async def _bridge(
    websocket: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    encode: Callable[[Message], bytes] = _keys,
) -> None:
    """Accept ``websocket`` and copy bytes both ways until either side ends; what the client
    sends goes through ``encode``."""
    asked = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=BINARY if BINARY in asked else None)

    async def upstream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            writer.write(encode(message))
            await writer.drain()

    async def downstream() -> None:
        while data := await reader.read(CHUNK):
            await websocket.send_bytes(data)

    pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        # Either side's end (a closed socket, a client gone) ends the bridge: not an error.
        await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for task in pumps:
            task.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close()
