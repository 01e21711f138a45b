"""The command line as a user types it: the acceptance sequence and bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import cli

pytestmark = [pytest.mark.tcg, pytest.mark.slow]


def ok(home: Path, *args: str) -> str:
    result = cli(home, *args)
    assert result.returncode == 0, f"corral {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_acceptance_sequence(corral_home: Path) -> None:
    ok(corral_home, "host", "check")
    images = json.loads(ok(corral_home, "image", "list", "--json"))
    assert "reference" in [i["name"] for i in images]
    ok(corral_home, "create", "demo1", "--image", "reference", "--vcpus", "1", "--memory", "256M")
    ok(corral_home, "start", "demo1", "--wait")
    ok(corral_home, "pause", "demo1")
    ok(corral_home, "resume", "demo1")
    assert "ready in" in ok(corral_home, "reboot", "demo1", "--wait")
    running = json.loads(ok(corral_home, "list", "--json"))
    demo = next(v for v in running if v["name"] == "demo1")
    assert demo["state"] == "running"
    assert demo["host_memory"] > 0
    ok(corral_home, "stop", "demo1")
    listed = json.loads(ok(corral_home, "list", "--all", "--json"))
    assert next(v for v in listed if v["name"] == "demo1")["state"] == "shutoff"
    ok(corral_home, "delete", "demo1")
    assert not (corral_home / "vms" / "demo1").exists()
    assert "demo1" not in ok(corral_home, "list", "--all")


def refused(home: Path, *args: str) -> str:
    result = cli(home, *args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def leaves_nothing(home: Path, name: str) -> None:
    assert not (home / "vms" / name).exists()
    assert name not in cli(home, "list", "--all").stdout


def test_bad_input_is_one_clear_line_and_leaves_nothing(corral_home: Path, tmp_path: Path) -> None:
    assert "vm 'nope' not found" in refused(corral_home, "start", "nope")
    assert "image 'nope' not found" in refused(corral_home, "create", "bad1", "--image", "nope")
    leaves_nothing(corral_home, "bad1")
    assert "name" in refused(corral_home, "create", "Bad_Name", "--image", "reference")
    line = refused(corral_home, "create", "bad2", "--image", "reference", "--memory", "1T")
    assert "memory" in line and "exceeds the host" in line
    leaves_nothing(corral_home, "bad2")
    line = refused(corral_home, "create", "bad3", "--image", "reference", "--memory", "4K")
    assert line.startswith("error: memory:")
    line = refused(corral_home, "create", "bad4", "--image", "reference", "--disk-size", "1M")
    assert "size" in line
    leaves_nothing(corral_home, "bad4")

    ok(corral_home, "create", "dup1", "--image", "reference", "--memory", "256M")
    try:
        assert "already exists" in refused(corral_home, "create", "dup1", "--image", "reference")
        line = refused(corral_home, "resume", "dup1")
        assert line == "error: cannot resume vm 'dup1': it is defined; resume needs paused"
    finally:
        ok(corral_home, "delete", "dup1")

    assert "not" in refused(corral_home, "image", "import", "x1", str(tmp_path / "missing.img"))
    corrupt = tmp_path / "corrupt.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(corrupt), "64M"], check=True)
    with corrupt.open("r+b") as f:  # point the L1 table far outside the file
        f.seek(40)
        f.write((1 << 62).to_bytes(8, "big"))
    refused(corral_home, "image", "import", "x2", str(corrupt))
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
        check=True,
    )
    assert "backing" in refused(corral_home, "image", "import", "x3", str(overlay))
    images = json.loads(ok(corral_home, "image", "list", "--json"))
    assert {i["name"] for i in images}.isdisjoint({"x1", "x2", "x3"})
    assert not any((corral_home / "images").glob("x*"))


def test_image_in_use_cannot_be_deleted(corral_home: Path) -> None:
    ok(corral_home, "create", "user1", "--image", "reference", "--memory", "256M")
    try:
        line = refused(corral_home, "image", "delete", "reference")
        assert "in use by user1" in line
    finally:
        ok(corral_home, "delete", "user1")


def test_update_detach_and_keep_disks(corral_home: Path) -> None:
    ok(corral_home, "create", "upd1", "--image", "reference", "--memory", "128M")
    try:
        said = ok(corral_home, "update", "upd1", "--vcpus", "2", "--memory", "192M")
        assert said.strip() == "VM upd1 updated (2 vCPU, 192 MiB)"
        assert refused(corral_home, "update", "upd1").startswith("error: update: nothing to change")
        assert "upd1" not in [v["name"] for v in json.loads(ok(corral_home, "list", "--json"))]

        detached = ok(corral_home, "start", "upd1", "--detach").split()
        assert detached[0] == "task" and detached[2:4] == ["(vm.start", "upd1)"]
        task = wait_task(corral_home, detached[1])
        assert task["status"] == "success" and task["detail"] == "started", task
        running = json.loads(ok(corral_home, "list", "--json"))
        assert [(v["name"], v["vcpus"]) for v in running if v["name"] == "upd1"] == [("upd1", 2)]
        line = refused(corral_home, "update", "upd1", "--memory", "256M")
        assert line == (
            "error: cannot update vm 'upd1': it is running; update needs defined, shutoff, crashed"
        )
        assert ok(corral_home, "destroy", "upd1").strip() == "VM upd1 destroyed (forced off)"
    finally:
        deleted = ok(corral_home, "delete", "upd1", "--keep-disks").splitlines()
    assert deleted[0] == "VM upd1 deleted"
    kept = Path(deleted[1].removeprefix("  kept disk "))
    assert deleted[1].startswith("  kept disk ") and kept.parent == corral_home / "disks"
    assert kept.stat().st_size > 0
    kept.unlink()
    leaves_nothing(corral_home, "upd1")


def wait_task(home: Path, task_id: str, deadline: float = 120.0) -> dict[str, object]:
    """``corral task show`` until the task's status is final."""
    end = time.monotonic() + deadline
    while True:
        task: dict[str, object] = json.loads(ok(home, "task", "show", task_id, "--json"))
        if task["status"] in ("success", "error", "cancelled"):
            return task
        assert time.monotonic() < end, task
        time.sleep(0.1)


def test_a_task_that_fails_exits_1_with_its_error(corral_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        forward = f"{port}:22"
        ok(corral_home, "create", "fail1", "--image", "reference", "--forward", forward)
        try:
            result = cli(corral_home, "start", "fail1")
            assert result.returncode == 1
            first, *said, command = result.stderr.strip().splitlines()
            assert "Traceback" not in result.stderr, result.stderr
            assert first.startswith("error: QEMU exited with status ")
            # Then what QEMU said, and the command line that made it say so.
            assert any("Could not set up host forwarding" in line for line in said), said
            assert command.startswith("  command: ") and f"{port}-:22" in command
            assert result.stdout == ""
            assert json.loads(ok(corral_home, "info", "fail1", "--json"))["state"] == "defined"
        finally:
            ok(corral_home, "delete", "fail1")
