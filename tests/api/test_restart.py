"""``kill -9`` of corrald with a running VM, then a new corrald: the guest never noticed.

QEMU runs detached from the daemon; the new daemon finds the VM running under the same QEMU
PID, controls it (pause, resume, destroy through tasks) and has lost no record.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests.integration.conftest import cli

pytestmark = [pytest.mark.tcg]

CORRAL = str(Path(sys.executable).with_name("corral"))
FINAL = {"success", "error", "cancelled"}


def corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(home, *args, timeout=120)


@pytest.fixture
def home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cr9-", dir="/tmp"))
    ctx = Corral(Home(root))
    ensure_reference(ctx)
    create(ctx, CreateRequest(name="survivor", image="reference", memory="128M"))
    ctx.close()
    yield root
    corral(root, "destroy", "survivor")
    corral(root, "serve", "--stop")
    shutil.rmtree(root, ignore_errors=True)


def client(home: Path) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(home / "corrald.sock"))
    return httpx.Client(transport=transport, base_url="http://corrald/api/v1", timeout=60)


def run_task(api: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """Ask for an action (202), then poll its task until it ends (with a deadline)."""
    answer = api.request(method, path, **kwargs)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        task: dict[str, Any] = api.get(f"/tasks/{task_id}").json()
        if task["status"] in FINAL:
            return task
        assert time.monotonic() < deadline, f"task {task_id} still {task['status']}"
        time.sleep(0.05)


def test_kill_9_and_restart_readopts_the_guest(home: Path) -> None:
    assert corral(home, "serve", "--detach").returncode == 0
    with client(home) as api:
        started = run_task(api, "POST", "/vms/survivor/start", json={"wait": True})
        assert started["status"] == "success", started
        before = api.get("/vms/survivor").json()
        assert before["state"] == "running"
    qemu_pid = before["pid"]
    daemon_pid = int((home / "corrald.pid").read_text())

    os.kill(daemon_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{daemon_pid}").exists():
        assert time.monotonic() < deadline, "corrald survived SIGKILL"
        time.sleep(0.02)
    assert Path(f"/proc/{qemu_pid}").exists(), "the guest died with the daemon"

    # The killed daemon left its socket and pidfile; a new one replaces them.
    again = corral(home, "serve", "--detach")
    assert again.returncode == 0, again.stderr
    with client(home) as api:
        after = api.get("/vms/survivor").json()
        assert after["state"] == "running"
        assert after["pid"] == qemu_pid
        assert after["created_at"] == before["created_at"]
        assert run_task(api, "POST", "/vms/survivor/pause")["status"] == "success"
        assert api.get("/vms/survivor").json()["state"] == "paused"
        assert run_task(api, "POST", "/vms/survivor/resume")["status"] == "success"
        assert run_task(api, "POST", "/vms/survivor/destroy")["status"] == "success"
        assert api.get("/vms/survivor").json()["state"] == "shutoff"
    assert not Path(f"/proc/{qemu_pid}").exists()


def test_task_cli_starts_the_daemon_and_shows_tasks(home: Path) -> None:
    """``corral task list`` with no daemon running starts one; it then shows the API's tasks."""
    assert not (home / "corrald.sock").exists()
    empty = corral(home, "task", "list", "--json")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == "[]"
    assert (home / "corrald.sock").exists()
    with client(home) as api:
        task = run_task(api, "POST", "/vms/survivor/start")
    assert task["status"] == "success"
    listed = corral(home, "task", "list")
    assert listed.returncode == 0 and "vm.start" in listed.stdout and "success" in listed.stdout
    shown = corral(home, "task", "show", task["id"][:8], "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"status": "success"' in shown.stdout
    refused = corral(home, "task", "cancel", task["id"])
    assert refused.returncode == 1 and "error:" in refused.stderr
    missing = corral(home, "task", "show", "ffffffff")
    assert missing.returncode == 2


def test_events_cli_replays_a_start(home: Path) -> None:
    """``corral events --since 0`` (the client's SSE reader) shows a start's task events."""
    import json

    assert corral(home, "serve", "--detach").returncode == 0
    with client(home) as api:
        assert run_task(api, "POST", "/vms/survivor/start")["status"] == "success"
        held = api.get("/events", headers={"Last-Event-ID": "0"}).json()
    count = len(held["items"]) + (1 if held["lost"] else 0)
    shown = subprocess.run(
        [CORRAL, "events", "--json", "--since", "0", "--count", str(count)],
        env=dict(os.environ, CORRAL_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(chunk) for chunk in _json_objects(shown.stdout)]
    assert len(events) == count
    statuses = [e["data"]["status"] for e in events if e["kind"] == "task"]
    assert statuses[0] == "queued" and statuses[-1] == "success"
    assert [e["id"] for e in events if "id" in e] == sorted(e["id"] for e in events if "id" in e)


def _json_objects(text: str) -> list[str]:
    """Split the concatenated pretty-printed JSON objects ``--json`` prints."""
    chunks, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                chunks.append(text[start : i + 1])
    return chunks
