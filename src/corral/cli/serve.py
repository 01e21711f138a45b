"""``corral serve``: run corrald, the REST API, in the foreground or detached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_corral


def serve_cmd(
    bind: Annotated[
        str | None,
        typer.Option(help="Also listen on this TCP address, e.g. 127.0.0.1:8140 (tokens needed)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM) for the TCP address.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background; return once it answers.")
    ] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the detached daemon.")] = False,
    on_demand: Annotated[
        bool,
        typer.Option(
            "--on-demand",
            hidden=True,
            help="Started by a CLI verb that found no daemon: corral serve may replace it.",
        ),
    ] = False,
) -> None:
    """Run corrald: the REST API on $CORRAL_HOME/corrald.sock (and --bind)."""
    from corral.api.server import LOG_NAME, PIDFILE_NAME, SOCKET_NAME, Listen, parse_bind
    from corral.errors import InvalidInput

    with open_corral() as ctx:
        root = ctx.home.root
    pidfile = root / PIDFILE_NAME
    if stop:
        _stop(pidfile)
        return
    if bind is not None and not _token_auth_available():
        raise InvalidInput("bind", "TCP listening needs API tokens, which this corral lacks")
    if tls_key is not None and tls_cert is None:
        raise InvalidInput("tls_key", "a TLS key needs --tls-cert")
    if tls_cert is not None and bind is None:
        raise InvalidInput("tls_cert", "TLS applies to the TCP address: give --bind too")
    for field, path in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if path is not None and not path.is_file():
            raise InvalidInput(field, f"{path} is not a file")
    listen = Listen(
        socket=root / SOCKET_NAME,
        tcp=parse_bind(bind) if bind else None,
        tls_cert=tls_cert.absolute() if tls_cert else None,
        tls_key=tls_key.absolute() if tls_key else None,
    )
    if detach:
        _detach(listen, root / LOG_NAME, pidfile, on_demand)
        return
    from corral.api.server import serve

    with open_corral() as ctx:
        serve(ctx, listen, pidfile, on_demand)


def _token_auth_available() -> bool:
    """Whether the API checks tokens on TCP (it must before it listens there)."""
    from corral.api.app import TCP_AUTH

    return TCP_AUTH


def _detach(listen: object, log: Path, pidfile: Path, on_demand: bool) -> None:
    """Start ``corral serve`` (same options, without ``--detach``) in its own session.

    A daemon that already answers is left alone when it listens as asked (nothing to do),
    and replaced when a CLI verb started it on demand; one started by ``corral serve`` with
    other options is an error (stop it first).
    """
    from corral.api.server import STARTED_NAME, Listen, Started, bind_text
    from corral.client.local import answers
    from corral.errors import HostError

    assert isinstance(listen, Listen)
    if answers(listen.socket):
        running = Started.read(pidfile.with_name(STARTED_NAME))
        wanted = (bind_text(listen.tcp), listen.tls_cert is not None)
        if running is not None and (running.tcp, running.tls) == wanted:
            render.out.print(
                f"corrald already running (pid {running.pid}) on {_where(listen)}",
                markup=False,
                soft_wrap=True,
            )
            return
        if running is None or not running.on_demand or on_demand:
            how = f" (pid {running.pid}, TCP {running.tcp or 'off'})" if running else ""
            raise HostError(
                f"corrald is already running on {listen.socket}{how}; "
                "to start it with other options, stop it first: corral serve --stop"
            )
        # Started by a verb with no TCP: guests do not notice, running tasks finish first.
        _stop(pidfile, timeout=120.0, quiet=True)
        render.out.print(
            f"stopped the corrald a command had started (pid {running.pid}), to listen as asked",
            markup=False,
            soft_wrap=True,
        )
    argv = [sys.executable, "-c", "from corral.cli.main import main; main()", "serve"]
    if on_demand:
        argv.append("--on-demand")
    if listen.tcp is not None:
        host, port = listen.tcp
        argv += ["--bind", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if listen.tls_cert is not None:
        argv += ["--tls-cert", str(listen.tls_cert)]
    if listen.tls_key is not None:
        argv += ["--tls-key", str(listen.tls_key)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise HostError(f"corrald exited with status {proc.returncode}: {' | '.join(tail)}")
        if answers(listen.socket):
            render.out.print(
                f"corrald running (pid {proc.pid}) on {_where(listen)}; log {log}",
                markup=False,
                soft_wrap=True,
            )
            return
        time.sleep(0.05)
    proc.terminate()
    raise HostError(f"corrald did not answer on {listen.socket} within 30 s; see {log}")


def _where(listen: object) -> str:
    from corral.api.server import Listen, bind_text

    assert isinstance(listen, Listen)
    tcp = bind_text(listen.tcp)
    scheme = "https" if listen.tls_cert else "http"
    return f"{listen.socket}" + (f" and {scheme}://{tcp}" if tcp else "")


def _stop(pidfile: Path, timeout: float = 15.0, quiet: bool = False) -> None:
    from corral.errors import NotFound

    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        raise NotFound("corrald", str(pidfile.parent)) from None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        raise NotFound("corrald", f"pid {pid}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            if not quiet:
                render.out.print(f"corrald (pid {pid}) stopped", markup=False)
            return
        time.sleep(0.05)
    raise NotFound("corrald", f"pid {pid} still running after SIGTERM")
