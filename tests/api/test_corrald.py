"""The real daemon: ``corral serve --detach`` answers on its UNIX socket and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from corral.client import Client
from corral.client.api import ApiError
from tests.integration.conftest import cli

CORRAL = str(Path(sys.executable).with_name("corral"))


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(home, *args, timeout=60)


def test_serve_detach_answers_and_stops() -> None:
    home = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    started = run(home, "serve", "--detach")
    assert started.returncode == 0, started.stderr
    sock = home / "corrald.sock"
    try:
        assert sock.stat().st_mode & 0o777 == 0o600
        pid = int((home / "corrald.pid").read_text())
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://corrald") as client:
            assert client.get("/api/v1/vms").json()["items"] == []
            assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "corral"
        with Client(socket=sock) as api:
            assert api.list_vms().total == 0
            assert api.get_type("t1.micro").memory == 512 << 20
            assert api.host().cpus >= 1
            with pytest.raises(ApiError) as caught:
                api.get_vm("nope")
            assert caught.value.status == 404 and caught.value.kind == "NotFound"
            assert caught.value.message == "vm 'nope' not found"
            with pytest.raises(ApiError) as caught:
                api.list_vms(limit=0)
            assert caught.value.status == 422 and caught.value.field == "limit"
            with pytest.raises(ApiError) as caught:
                api.get_image("../vms")  # one path segment, never another path
            assert caught.value.status == 404
        again = run(home, "serve", "--detach")
        assert again.returncode == 0 and "already running (pid" in again.stdout, again.stderr
        assert int((home / "corrald.pid").read_text()) == pid
        other = run(home, "serve", "--detach", "--bind", f"127.0.0.1:{free_port()}")
        assert other.returncode == 1 and "stop it first: corral serve --stop" in other.stderr
        assert int((home / "corrald.pid").read_text()) == pid
    finally:
        stopped = run(home, "serve", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not sock.exists()
    assert not Path(f"/proc/{pid}").exists()
    assert not (home / "corrald.pid").exists()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, timeout=30, check=False
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_acceptance_over_tcp() -> None:
    """The issue's acceptance lines, as written (with a free port instead of 8140)."""
    home = Path(tempfile.mkdtemp(prefix="ca-", dir="/tmp"))
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    started = run(home, "serve", "--bind", f"127.0.0.1:{port}", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        assert run(home, "project", "create", "p1").returncode == 0
        made = run(home, "user", "create", "alice", "--role", "operator", "--project", "p1",
                   "--token")  # fmt: skip
        assert made.returncode == 0, made.stderr
        token = next(
            word for line in made.stdout.splitlines() for word in line.split()
            if word.startswith("crl_")
        )  # fmt: skip
        listed = curl("-f", "-H", f"Authorization: Bearer {token}", f"{base}/vms")
        assert listed.returncode == 0, listed.stderr
        assert '"items":[]' in listed.stdout.replace(" ", "")
        document = curl("-f", f"{base}/openapi.json")
        assert document.returncode == 0 and '"openapi"' in document.stdout
        code = curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/vms")
        assert code.stdout == "401"
        # The UNIX socket stays: the local administrator needs no token there.
        with Client(socket=home / "corrald.sock") as api:
            assert api.list_vms().total == 0
    finally:
        stopped = run(home, "serve", "--stop")
    assert stopped.returncode == 0, stopped.stderr


def test_serve_replaces_a_daemon_a_verb_started() -> None:
    """The acceptance's order reversed: a verb starts the local daemon (no TCP), then
    ``corral serve --bind`` replaces it with one that listens as asked."""
    import json

    home = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    try:
        assert run(home, "project", "create", "p1").returncode == 0
        first = int((home / "corrald.pid").read_text())
        record = json.loads((home / "corrald.json").read_text())
        assert record == {"pid": first, "tcp": None, "tls": False, "on_demand": True}
        port = free_port()
        served = run(home, "serve", "--bind", f"127.0.0.1:{port}", "--detach")
        assert served.returncode == 0, served.stderr
        assert "stopped the corrald a command had started" in served.stdout
        second = int((home / "corrald.pid").read_text())
        assert second != first and not Path(f"/proc/{first}").exists()
        record = json.loads((home / "corrald.json").read_text())
        assert record == {
            "pid": second,
            "tcp": f"127.0.0.1:{port}",
            "tls": False,
            "on_demand": False,
        }
        answer = curl(
            "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/api/v1/vms"
        )
        assert answer.stdout == "401"
        assert "p1" in run(home, "project", "list").stdout  # nothing was lost
    finally:
        run(home, "serve", "--stop")
