"""The local daemon: found on ``$CORRAL_HOME/corrald.sock``, started when none answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from corral.client.api import Client
from corral.errors import HostError

SOCKET_NAME = "corrald.sock"


def answers(sock: Path) -> bool:
    """Whether a corrald answers on ``sock``."""
    import httpx

    if not sock.exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2.0) as http:
            return http.get("http://corrald/api/v1/openapi.json").status_code == 200
    except httpx.HTTPError:
        return False


def connect(home: Path, start: bool = True, timeout: float = 30.0) -> Client:
    """A client of the state directory ``home``'s daemon, started first if none answers.

    :param start: start ``corral serve --detach`` when no daemon answers.
    :raise HostError: no daemon answers and one could not be started.
    """
    sock = home / SOCKET_NAME
    if not answers(sock):
        if not start:
            raise HostError(f"corrald is not running on {sock} (start it: corral serve --detach)")
        argv = [sys.executable, "-c", "from corral.cli.main import main; main()"]
        env = dict(os.environ, CORRAL_HOME=str(home))
        proc = subprocess.run(
            [*argv, "serve", "--detach", "--on-demand"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        # Another command may have started it at the same moment: what counts is an answer.
        deadline = time.monotonic() + timeout
        while not answers(sock):
            if time.monotonic() > deadline:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise HostError(f"corrald could not be started on {sock}: {last[0]}")
            time.sleep(0.05)
    return Client(socket=sock)
