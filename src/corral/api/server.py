"""Running corrald: uvicorn on a UNIX socket (always) and a TCP address (when asked).

The UNIX socket is ``$CORRAL_HOME/corrald.sock``, mode 0600 in the 0700 state directory:
only the directory's owner (and root) can connect, and they are its administrators, as with
Incus's local socket. A TCP listener serves the same API to remote clients, with TLS when
given a certificate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from corral.compute.context import Corral
from corral.config import MAX_SOCKET_PATH
from corral.errors import HostError, InvalidInput

SOCKET_NAME = "corrald.sock"
PIDFILE_NAME = "corrald.pid"
LOG_NAME = "corrald.log"
#: How the running daemon was started (:class:`Started`), beside its pidfile.
STARTED_NAME = "corrald.json"


@dataclass(frozen=True)
class Listen:
    """Where the daemon listens."""

    socket: Path
    #: ``(host, port)`` for TCP, or ``None``.
    tcp: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


def parse_bind(text: str) -> tuple[str, int]:
    """``127.0.0.1:8140`` or ``[::1]:8140`` -> (host, port).

    :raise InvalidInput: not ``HOST:PORT`` with a port in 1-65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidInput("bind", f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8140)")
    return host, int(port)


def unix_listener(path: Path) -> socket.socket:
    """A listening UNIX socket at ``path`` (mode 0600); a stale one is replaced.

    :raise HostError: another daemon answers on it, or the path is too long.
    """
    if len(str(path)) > MAX_SOCKET_PATH:
        raise HostError(f"{path} is longer than a UNIX socket path may be ({MAX_SOCKET_PATH})")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            raise HostError(f"cannot use {path}: {exc.strerror}") from exc
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a daemon that died
    else:
        raise HostError(f"corrald is already running on {path}")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    path.chmod(0o600)
    sock.listen(128)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket.

    :raise HostError: the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: an answer's head and body go out at once, not 40 ms
    # apart (Nagle's algorithm waiting for the client's delayed ACK on a kept-alive connection).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    return sock


@dataclass(frozen=True)
class Started:
    """How a running daemon was started: what ``corral serve --detach`` compares a request
    with, to start nothing twice."""

    pid: int
    #: ``host:port`` of its TCP listener, or ``None``.
    tcp: str | None
    tls: bool
    #: Started by a CLI verb that found no daemon (not by ``corral serve``): replaceable.
    on_demand: bool

    @classmethod
    def read(cls, path: Path) -> Started | None:
        """The record at ``path``, or ``None`` when there is none (or it is not one)."""
        import json

        try:
            raw = json.loads(path.read_text())
            return cls(int(raw["pid"]), raw["tcp"], bool(raw["tls"]), bool(raw["on_demand"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def bind_text(tcp: tuple[str, int] | None) -> str | None:
    """``host:port`` (``[host]:port`` for IPv6) of a TCP listener."""
    if tcp is None:
        return None
    host, port = tcp
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(
    ctx: Corral, listen: Listen, pidfile: Path | None = None, on_demand: bool = False
) -> None:
    """Serve the API until SIGINT or SIGTERM (blocking).

    The UNIX socket and the TCP address are two uvicorn servers in one event loop, so that
    TLS (when given) applies to TCP only; the signals stop both. Only the first runs the app's
    lifespan: one task pool, one event broker, one watcher (a VM's events monitor takes one
    listener) serve both.

    :param pidfile: written with this process's PID once the sockets listen, removed at exit;
        beside it, :data:`STARTED_NAME` records how the daemon was started.
    :param on_demand: started by a CLI verb, not by ``corral serve`` (see :class:`Started`).
    """
    import asyncio

    from corral.api.app import create_app
    from corral.api.auth import via

    app = create_app(ctx)
    listeners = [(unix_listener(listen.socket), False)]
    try:
        if listen.tcp is not None:
            listeners.append((tcp_listener(*listen.tcp), True))
        servers: list[tuple[_Server, socket.socket]] = []
        for sock, remote in listeners:
            tls = remote and listen.tls_cert is not None
            config = uvicorn.Config(
                via(app, "tcp" if remote else "unix"),
                log_level="info",
                access_log=False,
                ssl_certfile=str(listen.tls_cert) if tls else None,
                ssl_keyfile=str(listen.tls_key) if tls and listen.tls_key else None,
                timeout_graceful_shutdown=5,
                lifespan="off" if servers else "on",
            )
            servers.append((_Server(config), sock))
        if pidfile is not None:
            _record_start(pidfile, listen, on_demand)
        asyncio.run(_serve_all(servers, lambda: _close_streams(app)))
    finally:
        if pidfile is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if int(pidfile.read_text()) == os.getpid():
                    pidfile.unlink()
                    pidfile.with_name(STARTED_NAME).unlink(missing_ok=True)
        for sock, _ in listeners:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            listen.socket.unlink()


def _record_start(pidfile: Path, listen: Listen, on_demand: bool) -> None:
    import json
    from dataclasses import asdict

    started = Started(os.getpid(), bind_text(listen.tcp), listen.tls_cert is not None, on_demand)
    record = pidfile.with_name(STARTED_NAME)
    tmp = record.with_name(f".{STARTED_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(started)) + "\n")
    tmp.replace(record)
    pidfile.write_text(f"{os.getpid()}\n")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`_serve_all`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _close_streams(app: object) -> None:
    """End the open event streams, so that they do not hold the shutdown for its timeout."""
    broker = getattr(getattr(app, "state", None), "events", None)
    if broker is not None:
        broker.close()


async def _serve_all(
    servers: list[tuple[_Server, socket.socket]], on_stop: Callable[[], None]
) -> None:
    import asyncio
    import signal

    loop = asyncio.get_running_loop()

    def stop() -> None:
        on_stop()
        for server, _ in servers:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))
