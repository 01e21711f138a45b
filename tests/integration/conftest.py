"""Fixtures for tests that boot the reference guest with real QEMU (TCG unless KVM works)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.api import Client
from corral.client.local import connect
from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create, delete
from corral.compute.inventory import info
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.errors import CorralError
from tests import daemons

CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.fixture(scope="session")
def corral_home() -> Iterator[Path]:
    """A state directory with the reference image imported (short path: sockets live in it)."""
    root = Path(tempfile.mkdtemp(prefix="cr-", dir="/tmp"))
    ctx = Corral(Home(root))
    ensure_reference(ctx)
    ctx.close()
    yield root
    daemons.stop(root)
    for vm_dir in (root / "vms").glob("*"):
        pid_file = vm_dir / "qemu.pid"
        if pid_file.exists():
            subprocess.run(["pkill", "-9", "-F", str(pid_file)], check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ctx(corral_home: Path) -> Iterator[Corral]:
    c = Corral(Home(corral_home))
    yield c
    c.close()


@pytest.fixture
def client(corral_home: Path) -> Iterator[Client]:
    """A client of ``corral_home``'s local daemon (started on demand, stopped at the end)."""
    api = connect(corral_home)
    daemons.note(corral_home)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def vm(ctx: Corral) -> Iterator[str]:
    """A defined VM cloned from the reference image; destroyed and deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    create(ctx, CreateRequest(name=name, image="reference", memory="256M"))
    yield name
    try:
        if info(ctx, name).state in ("running", "paused", "starting", "stopping"):
            lifecycle.destroy(ctx, name)
        delete(ctx, name)
    except CorralError:
        pass


def cli(
    home: Path, *args: str, timeout: float = 300, env_home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``corral`` command against ``home`` (with ``$HOME`` at ``env_home``).

    A verb that starts ``home``'s daemon leaves it running, as it would for a user; the
    session stops it (:mod:`tests.daemons`).
    """
    env = dict(os.environ, CORRAL_HOME=str(home), COLUMNS="200")
    for remote in ("CORRAL_URL", "CORRAL_TOKEN"):
        env.pop(remote, None)
    if env_home is not None:
        env["HOME"] = str(env_home)
        env.pop("XDG_CONFIG_HOME", None)
    try:
        return subprocess.run(
            [CORRAL, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        daemons.note(home)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


class GuestShell:
    """Types commands into the reference guest's serial shell and reads their output."""

    def __init__(self, ctx: Corral, name: str) -> None:
        vm_dir = ctx.home.vm_dir(name)
        self.socket = str(vm_dir / "serial.sock")
        self.log = vm_dir / "serial.log"

    def _lines_after(self, start: int) -> list[str]:
        text = self.log.read_bytes()[start:].decode(errors="replace").replace("\r", "")
        return text.split("\n")

    def run(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command``; return what it printed (between two unique markers).

        The shell may not be reading the console yet right after the ready marker (init starts
        it after rcS), so a unique ``echo`` is repeated until the shell answers it.
        """
        tag = uuid.uuid4().hex[:10]
        start = self.log.stat().st_size
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(self.socket)
            # A connected client that does not read stalls the guest's UART: drain the socket
            # (the serial log has the same bytes) for as long as we are connected.
            threading.Thread(target=_drain, args=(sock,), daemon=True).start()
            next_sync = 0.0
            while f"S-{tag}" not in self._lines_after(start):
                assert time.monotonic() < deadline, f"the guest shell never answered ({command!r})"
                if time.monotonic() >= next_sync:
                    sock.sendall(f"echo S-{tag}\n".encode())
                    next_sync = time.monotonic() + 1.0
                time.sleep(0.05)
            sock.sendall(f"echo B-{tag}; {command}; echo E-{tag}\n".encode())
            while time.monotonic() < deadline:
                lines = self._lines_after(start)
                if f"E-{tag}" in lines:
                    begin = lines.index(f"B-{tag}")
                    end = lines.index(f"E-{tag}")
                    return "\n".join(
                        ln for ln in lines[begin + 1 : end] if not ln.startswith("corral-heartbeat")
                    )
                time.sleep(0.05)
        raise AssertionError(f"no output for {command!r} within {timeout} s")


@pytest.fixture
def shell(ctx: Corral, vm: str) -> GuestShell:
    return GuestShell(ctx, vm)
