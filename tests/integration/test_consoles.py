"""The consoles through a real corrald: the serial websocket carries a command line to the
guest's shell and its output back, ``corral console`` does the same from a terminal and
detaches on Ctrl-], and a real VNC client (vncdotool) grabs the framebuffer through
``corral vnc`` (a loopback port bridged to the ticket-checked VNC websocket), at the size
QEMU's own screen dump has.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from corral.access.local import local_principal
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.schemas import VmCreate
from corral.client.api import ApiError, Client
from corral.compute.context import Corral
from corral.errors import CorralError
from corral.qemu.monitor import Monitor
from tests.integration.conftest import CORRAL

pytestmark = [pytest.mark.tcg, pytest.mark.slow]


@pytest.fixture
def running(client: Client) -> Iterator[str]:
    """A running VM with a VNC display; destroyed and deleted afterwards."""
    name = f"c-{uuid.uuid4().hex[:8]}"
    client.create_vm(VmCreate(name=name, image="reference", memory="256M", vnc=True))
    try:
        assert client.wait_task(client.start_vm(name).id).status == "success"
        yield name
    finally:
        with contextlib.suppress(CorralError):
            client.wait_task(client.vm_action(name, "destroy").id)
        client.wait_task(client.delete_vm(name).id)


def _env(home: Path) -> dict[str, str]:
    """The environment of a ``corral`` command on ``home``'s local daemon."""
    env = dict(os.environ, CORRAL_HOME=str(home))
    for remote in ("CORRAL_URL", "CORRAL_TOKEN"):
        env.pop(remote, None)
    return env


def _until_answered(send: object, received: queue.Queue[bytes], marker: bytes) -> bytes:
    """Send ``echo`` lines until ``marker`` comes back (the shell may not read yet right after
    boot); everything received until then."""
    seen = b""
    deadline = time.monotonic() + 60
    next_send = 0.0
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen[-400:]!r}"
        if time.monotonic() >= next_send:
            send()  # type: ignore[operator]
            next_send = time.monotonic() + 1.0
        with contextlib.suppress(queue.Empty):
            seen += received.get(timeout=0.1)
    return seen


def test_the_serial_websocket_carries_a_command_and_its_output(
    client: Client, running: str
) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    with client.open_console(running) as console:

        def read() -> None:
            with contextlib.suppress(Exception):
                for message in console:
                    received.put(message if isinstance(message, bytes) else message.encode())

        threading.Thread(target=read, daemon=True).start()
        # The output is computed by the guest: the answer is not an echo of what was typed.
        seen = _until_answered(
            lambda: console.send(b"echo WS-$((6*7))-OK\n"), received, b"WS-42-OK\r\n"
        )
    assert b"WS-42-OK" in seen


def test_corral_console_attaches_through_the_daemon_and_detaches_on_ctrl_bracket(
    corral_home: Path, client: Client, running: str
) -> None:
    proc = subprocess.Popen(
        [CORRAL, "console", running],
        env=_env(corral_home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    received: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            received.put(chunk)

    threading.Thread(target=read, daemon=True).start()
    stdin = proc.stdin

    def send() -> None:
        stdin.write(b"echo CLI-$((6*7))-OK\n")
        stdin.flush()

    try:
        _until_answered(send, received, b"CLI-42-OK\r\n")
        stdin.write(b"\x1d")
        stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    errors = proc.stderr.read().decode()
    assert f"Connected to {running}" in errors and f"Disconnected from {running}" in errors


def test_a_vnc_client_grabs_the_framebuffer_through_the_websocket(
    corral_home: Path, client: Client, running: str, tmp_path: Path
) -> None:
    from vncdotool import api as vnc

    proc = subprocess.Popen(
        [CORRAL, "vnc", running, "--once"],
        env=_env(corral_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        address = proc.stdout.readline().strip()  # 127.0.0.1:PORT, once it listens
        assert address.startswith("127.0.0.1:"), proc.stderr.read()
        viewer = vnc.connect(address.replace(":", "::"), timeout=60)
        try:
            viewer.captureScreen(str(tmp_path / "grab.png"))
        finally:
            viewer.disconnect()
        assert proc.wait(timeout=30) == 0  # --once: the viewer left, so did corral vnc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    grab = Image.open(tmp_path / "grab.png")
    assert grab.format == "PNG"
    qmp = str(corral_home / "vms" / running / "qmp.sock")
    with Monitor(qmp) as mon:
        mon.execute("screendump", {"filename": str(tmp_path / "qemu.ppm")})
    assert grab.size == Image.open(tmp_path / "qemu.ppm").size
    assert grab.size[0] >= 320 and grab.size[1] >= 200


@contextlib.contextmanager
def tcp_daemon(ctx: Corral) -> Iterator[str]:
    """The API of ``ctx`` on a loopback TCP port, as ``corral serve --bind`` serves it (its
    lifespan off: the local daemon runs the tasks)."""
    import socket

    import uvicorn

    from corral.api.app import create_app
    from corral.api.auth import via

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(via(create_app(ctx), "tcp"), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_a_remote_client_attaches_with_its_token_and_not_without(ctx: Corral, running: str) -> None:
    admin = local_principal(ctx, os.geteuid())
    user = f"op-{uuid.uuid4().hex[:6]}"
    create_user(ctx, admin, user, "operator", ["default"])
    secret = create_token(ctx, admin, user).secret
    with tcp_daemon(ctx) as url:
        with Client(url=url) as anonymous:
            with pytest.raises(ApiError) as refused:
                anonymous.open_console(running)
            assert refused.value.status == 401 and refused.value.kind == "Unauthenticated"
        with Client(url=url, token=secret) as remote:
            received: queue.Queue[bytes] = queue.Queue()
            with remote.open_console(running) as console:

                def read() -> None:
                    with contextlib.suppress(Exception):
                        for message in console:
                            received.put(message if isinstance(message, bytes) else b"")

                threading.Thread(target=read, daemon=True).start()
                _until_answered(
                    lambda: console.send(b"echo TCP-$((6*7))-OK\n"), received, b"TCP-42-OK\r\n"
                )
            with remote.open_vnc(running) as display:
                assert display.recv(timeout=30)[:4] == b"RFB "


def test_a_vnc_password_set_with_the_cli_refuses_a_viewer_without_it(
    corral_home: Path, client: Client, tmp_path: Path
) -> None:
    from vncdotool import api as vnc

    name = f"c-{uuid.uuid4().hex[:8]}"
    client.create_vm(VmCreate(name=name, image="reference", memory="256M"))
    env = _env(corral_home)
    try:
        for args, stdin in (([name, "--enable"], ""), ([name, "--password-stdin"], "pw-42\n")):
            done = subprocess.run(
                [CORRAL, "vnc", *args],
                check=False,
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
        assert (corral_home / "vms" / name / "vnc-password").read_text() == "pw-42"
        assert client.wait_task(client.start_vm(name).id).status == "success"
        proc = subprocess.Popen(
            [CORRAL, "vnc", name],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            address = proc.stdout.readline().strip().replace(":", "::")
            assert address.startswith("127.0.0.1::"), proc.stderr.read()
            # A client without the password gets no further than the RFB handshake, which
            # offers VNC authentication (type 2) and nothing else.
            host, port = address.split("::")
            assert _security_types(host, int(port)) == [2]
            viewer = vnc.connect(address, password="pw-42", timeout=60)
            try:
                viewer.captureScreen(str(tmp_path / "grab.png"))
            finally:
                viewer.disconnect()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        grab = Image.open(tmp_path / "grab.png")
        assert grab.size[0] >= 320 and grab.size[1] >= 200
        running = subprocess.run(
            [CORRAL, "vnc", name, "--disable"], check=False, env=env, capture_output=True, text=True
        )
        assert running.returncode != 0 and "stop it first" in running.stderr
    finally:
        with contextlib.suppress(CorralError):
            client.wait_task(client.vm_action(name, "destroy").id)
        client.wait_task(client.delete_vm(name).id)


def _security_types(host: str, port: int) -> list[int]:
    """The security types an RFB 3.8 server offers a new client."""
    import socket

    with socket.create_connection((host, port), timeout=30) as sock:
        reader = sock.makefile("rb")
        version = reader.read(12)
        assert version.startswith(b"RFB 003."), version
        sock.sendall(b"RFB 003.008\n")
        count = reader.read(1)[0]
        assert count > 0, "the server refused the connection"
        return list(reader.read(count))


@pytest.fixture(scope="module", autouse=True)
def _vnc_reactor() -> Iterator[None]:
    """vncdotool runs one Twisted reactor per process, which cannot start again once stopped:
    stop it when the module's tests are done, not after each."""
    yield
    from vncdotool import api as vnc

    vnc.shutdown()
