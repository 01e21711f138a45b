"""The VM life cycle on real QEMU with the reference guest."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.images import get_image
from corral.compute.inventory import info
from corral.compute.locks import ObjectLock
from corral.errors import StateError
from corral.qemu.process import start_ticks
from tests.integration.conftest import GuestShell, cli

pytestmark = [pytest.mark.tcg, pytest.mark.slow]

HEARTBEAT = re.compile(rb"^corral-heartbeat (\d+(?:\.\d+)?)\r?$", re.M)


def heartbeats(log: Path, start: int = 0) -> list[float]:
    return [float(m.group(1)) for m in HEARTBEAT.finditer(log.read_bytes()[start:])]


def wait_heartbeat(log: Path, start: int, timeout: float) -> float | None:
    """The first heartbeat after byte ``start`` within ``timeout`` s (``None`` if none came)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = heartbeats(log, start)
        if beats:
            return beats[0]
        time.sleep(0.05)
    return None


def test_pause_stops_the_guest_clock_and_resume_restarts_it(ctx: Corral, vm: str) -> None:
    lifecycle.start(ctx, vm, wait=True)
    log = ctx.home.vm_dir(vm) / "serial.log"
    assert wait_heartbeat(log, log.stat().st_size, 10) is not None
    lifecycle.pause(ctx, vm)
    assert info(ctx, vm).state == "paused"
    paused_at = time.monotonic()
    mark = log.stat().st_size
    last_before = heartbeats(log)[-1]
    # While paused, no heartbeat may appear (the guest's clock does not advance).
    assert wait_heartbeat(log, mark, 3.0) is None
    lifecycle.resume(ctx, vm)
    first_after = wait_heartbeat(log, mark, 10)
    wall = time.monotonic() - paused_at
    assert first_after is not None
    assert info(ctx, vm).state == "running"
    # The guest saw less time pass than the wall clock: it stood still while paused.
    assert first_after - last_before < wall - 2.0


def test_file_written_in_guest_survives_reboot_and_restart(ctx: Corral, vm: str) -> None:
    shell = GuestShell(ctx, vm)
    lifecycle.start(ctx, vm, wait=True)
    token = os.urandom(8).hex()
    shell.run(f"echo {token} > /root/persist")
    outcome = lifecycle.reboot(ctx, vm, wait=True)
    assert outcome.detail == "rebooted"  # the guest shut down cleanly on the ACPI button
    assert shell.run("cat /root/persist") == token
    lifecycle.stop(ctx, vm)
    assert info(ctx, vm).state == "shutoff"
    lifecycle.start(ctx, vm, wait=True)
    assert shell.run("cat /root/persist") == token


def test_base_image_is_unchanged_after_clone_is_written(ctx: Corral, vm: str) -> None:
    image = Path(get_image(ctx, "reference").path)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    assert image.stat().st_mode & 0o222 == 0  # read-only once imported
    lifecycle.start(ctx, vm, wait=True)
    shell = GuestShell(ctx, vm)
    shell.run("dd if=/dev/urandom of=/root/blob bs=1M count=8 2>/dev/null; sync")
    lifecycle.stop(ctx, vm)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    assert info(ctx, vm).used > 8 * 1024 * 1024


def test_kill_9_of_qemu_shows_crashed_and_it_starts_again(ctx: Corral, vm: str) -> None:
    lifecycle.start(ctx, vm, wait=True)
    pid = info(ctx, vm).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while info(ctx, vm).state != "crashed":
        assert time.monotonic() < deadline, "never shown as crashed"
        time.sleep(0.05)
    assert "SIGKILL" in info(ctx, vm).reason
    with pytest.raises(StateError, match="it is crashed"):
        lifecycle.resume(ctx, vm)
    lifecycle.start(ctx, vm, wait=True)
    assert info(ctx, vm).state == "running"


def test_guest_power_off_from_inside_shows_shutoff(ctx: Corral, vm: str) -> None:
    lifecycle.start(ctx, vm, wait=True)
    pid = info(ctx, vm).pid
    assert pid is not None
    GuestShell(ctx, vm).run("(sleep 0.2; poweroff) & true")
    deadline = time.monotonic() + 30
    while info(ctx, vm).state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    view = info(ctx, vm)
    assert view.state == "shutoff"
    assert view.reason == "guest powered off"


def test_stop_forces_off_a_guest_that_ignores_acpi(ctx: Corral, vm: str) -> None:
    lifecycle.start(ctx, vm, wait=True)
    GuestShell(ctx, vm).run("killall acpid; true")
    outcome = lifecycle.stop(ctx, vm, timeout=3)
    assert outcome.detail == "forced off after the timeout"
    assert info(ctx, vm).state == "shutoff"


def test_destroy_ends_qemu_at_once(ctx: Corral, vm: str) -> None:
    lifecycle.start(ctx, vm)
    pid = info(ctx, vm).pid
    assert pid is not None
    lifecycle.destroy(ctx, vm)
    assert start_ticks(pid) is None  # gone (or a zombie its supervisor is about to reap)
    assert info(ctx, vm).state == "shutoff"
    assert not (ctx.home.vm_dir(vm) / "qmp.sock").exists()


def test_ctrl_c_while_waiting_leaves_the_start_to_corrald_and_says_so(
    ctx: Corral, vm: str, corral_home: Path
) -> None:
    import json
    import subprocess

    from tests.integration.conftest import CORRAL

    env = dict(os.environ, CORRAL_HOME=str(corral_home))
    proc = subprocess.Popen(
        [CORRAL, "start", vm, "--wait"],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pidfile = ctx.home.vm_dir(vm) / "qemu.pid"
    deadline = time.monotonic() + 60
    while not pidfile.exists():
        assert time.monotonic() < deadline
        assert proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("interrupted: task ")
    assert f"(vm.start {vm}) goes on in corrald; follow it with corral task show " in lines[0]
    task_id = lines[0].split()[2]
    # The task runs on to its end without the command that asked for it.
    deadline = time.monotonic() + 120
    while True:
        shown = cli(corral_home, "task", "show", task_id, "--json")
        assert shown.returncode == 0, shown.stderr
        task = json.loads(shown.stdout)
        if task["status"] in ("success", "error", "cancelled"):
            break
        assert time.monotonic() < deadline, task
        time.sleep(0.1)
    assert task["status"] == "success", task
    assert task["detail"].startswith("started, ready in ")
    result = cli(corral_home, "info", vm, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "running"
    result = cli(corral_home, "stop", vm)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"VM {vm} is shut off (guest powered off)"
    assert info(ctx, vm).state == "shutoff"


def test_two_commands_on_one_vm_are_serialised(ctx: Corral, vm: str, corral_home: Path) -> None:
    import subprocess

    from tests.integration.conftest import CORRAL

    lifecycle.start(ctx, vm, wait=True)
    env = dict(os.environ, CORRAL_HOME=str(corral_home))
    lock = ObjectLock(ctx.home.locks, "vm", vm)
    lock.acquire()
    try:
        pauser = subprocess.Popen([CORRAL, "pause", vm], env=env, stdin=subprocess.DEVNULL)
        # While another command holds the VM, the second one waits and changes nothing.
        with pytest.raises(subprocess.TimeoutExpired):
            pauser.wait(timeout=1.5)
        assert info(ctx, vm).state == "running"
    finally:
        lock.release()
    assert pauser.wait(timeout=30) == 0
    assert info(ctx, vm).state == "paused"


def test_launch_failure_carries_argv_and_qemu_words_and_changes_nothing(ctx: Corral) -> None:
    import socket

    from corral.compute.define import CreateRequest, create, delete
    from corral.errors import LaunchError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        create(ctx, CreateRequest(name="busyport", image="reference", forwards=(f"{port}:22",)))
        try:
            with pytest.raises(LaunchError) as err:
                lifecycle.start(ctx, "busyport")
            assert err.value.argv[0].endswith("qemu-system-x86_64")
            assert any("hostfwd" in arg for arg in err.value.argv)
            assert any("forward" in line for line in err.value.output), err.value.output
            view = info(ctx, "busyport")
            assert view.state == "defined"
            assert view.pid is None
            assert not (ctx.home.vm_dir("busyport") / "qmp.sock").exists()
        finally:
            delete(ctx, "busyport")


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_firmware_boot_from_a_blank_disk(ctx: Corral, firmware: str) -> None:
    from corral.compute.define import CreateRequest, create, delete
    from corral.qemu.monitor import Monitor

    if firmware == "uefi" and ctx.caps.ovmf_code is None:
        pytest.skip("OVMF is not installed")
    name = f"fw-{firmware}"
    create(ctx, CreateRequest(name=name, disk_size="64M", memory="128M", firmware=firmware))
    try:
        lifecycle.start(ctx, name)
        with Monitor(str(ctx.home.vm_dir(name) / "qmp.sock")) as mon:
            assert mon.query_status() == "running"
            block = {b["device"] or b["qdev"]: b for b in mon.query_block()}
        assert any("root" in key for key in block)
        if firmware == "uefi":
            assert (ctx.home.vm_dir(name) / "OVMF_VARS.fd").stat().st_size > 0
            log = ctx.home.vm_dir(name) / "serial.log"
            deadline = time.monotonic() + 60
            while b"BdsDxe" not in log.read_bytes():  # OVMF's boot manager on the console
                assert time.monotonic() < deadline, "OVMF printed nothing"
                time.sleep(0.1)
        lifecycle.destroy(ctx, name)
    finally:
        delete(ctx, name)
