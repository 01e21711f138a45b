"""Running VMs: start, stop, destroy, pause, resume, reboot.

Each operation holds the VM's lock from start to end, so two commands on one VM are
serialised. State changes are committed as they happen (``starting`` before QEMU is launched,
``running`` once it answers), never inside a long wait, so a command killed at any point
leaves a record that :func:`corral.compute.records.reconcile` understands.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.compute.records import Vm
from corral.compute.serial import log_size, wait_for_line
from corral.compute.state import Op, VmState, require
from corral.errors import GuestTimeout, HostError, LaunchError, MonitorError
from corral.qemu import process
from corral.qemu.monitor import Monitor

#: Default seconds a guest gets to boot to its ready marker.
READY_TIMEOUT = 120.0
#: Default seconds a guest gets to power off after the ACPI button.
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Outcome:
    """What an operation did, for the CLI to report."""

    name: str
    state: VmState
    detail: str = ""
    seconds: float | None = None


def vm_lock(ctx: Corral, name: str) -> ObjectLock:
    """The lock that serialises commands on VM ``name``."""
    return ObjectLock(ctx.home.locks, "vm", name)


@contextmanager
def _record(ctx: Corral, name: str) -> Iterator[Vm]:
    """The VM's record in a short transaction, committed on exit."""
    with ctx.db.session() as session:
        yield records.load(ctx, session, name)


def _prepare(ctx: Corral, name: str, op: Op) -> Vm:
    """Reconcile the record and check that ``op`` is allowed; the caller holds the lock."""
    with _record(ctx, name) as vm:
        records.reconcile(vm)
        require(name, op, vm.state)
        return vm


def _set(
    ctx: Corral,
    name: str,
    state: VmState,
    reason: str,
    proc: process.QemuProcess | None = None,
) -> None:
    with _record(ctx, name) as vm:
        records.set_state(vm, state, reason, proc)


def start(ctx: Corral, name: str, wait: bool = False, timeout: float = READY_TIMEOUT) -> Outcome:
    """Boot a VM; with ``wait``, return once its ready marker is on the serial console.

    :raise StateError: the VM is not defined, shut off or crashed.
    :raise LaunchError: QEMU did not start (the VM is left as it was).
    :raise GuestTimeout: with ``wait``, no ready marker in time (the VM is left running).
    """
    from corral.qemu.argv import build_argv
    from corral.spec.validate import validate_spec

    with vm_lock(ctx, name):
        vm = _prepare(ctx, name, Op.START)
        previous = vm.state
        validate_spec(vm.spec, ctx.caps)
        argv = build_argv(vm.spec, ctx.caps, vm.paths)
        _ensure_uefi_vars(ctx, vm)
        process.clear_runtime(vm.paths)
        process.rotate_logs(vm.paths)
        offset = log_size(vm.paths.serial_log)
        _set(ctx, name, VmState.STARTING, "starting")
        try:
            proc = process.launch(argv, vm.paths)
        except LaunchError as exc:
            _set(ctx, name, VmState.SHUTOFF if previous is VmState.CRASHED else previous, str(exc))
            raise
        _set(ctx, name, VmState.RUNNING, "started", proc)
        if not wait or vm.row.ready_marker is None:
            return Outcome(name, VmState.RUNNING, f"pid {proc.pid}")
        seconds = _wait_ready(vm, proc, offset, timeout)
        return Outcome(name, VmState.RUNNING, "ready", seconds)


def _ensure_uefi_vars(ctx: Corral, vm: Vm) -> None:
    """Give a UEFI VM its own copy of OVMF's variable store (its NVRAM) on first start."""
    spec = vm.spec
    if spec.boot.kind != "firmware" or spec.boot.firmware != "uefi" or not vm.paths.ovmf_vars:
        return
    dest = Path(vm.paths.ovmf_vars)
    if dest.exists():
        return
    template = ctx.caps.ovmf_vars
    if template is None:
        raise HostError("UEFI needs OVMF's variable store template (apt-get install ovmf)")
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(template, tmp)
    tmp.replace(dest)


def _wait_ready(vm: Vm, proc: process.QemuProcess, offset: int, timeout: float) -> float:
    marker = vm.row.ready_marker
    assert marker is not None
    return wait_for_line(
        vm.name, vm.paths.serial_log, marker, offset, timeout, lambda: process.is_alive(proc)
    )


def stop(ctx: Corral, name: str, timeout: float = STOP_TIMEOUT, force: bool = True) -> Outcome:
    """Shut a VM down through ACPI; after ``timeout`` seconds, force it off if ``force``.

    :raise StateError: the VM is not running.
    :raise GuestTimeout: the guest ignored the power button and ``force`` is off.
    """
    with vm_lock(ctx, name):
        vm = _prepare(ctx, name, Op.STOP)
        proc = records.find_process(vm)
        assert proc is not None
        _set(ctx, name, VmState.STOPPING, "ACPI power button pressed")
        try:
            with Monitor(vm.paths.qmp_socket) as mon:
                mon.system_powerdown()
        except MonitorError:
            if process.is_alive(proc):
                raise
        if process.wait_exit(proc, timeout):
            _finish_off(ctx, vm, "stopped")
            return Outcome(name, VmState.SHUTOFF, "guest powered off")
        if not force:
            _set(ctx, name, VmState.RUNNING, "guest ignored the ACPI power button")
            raise GuestTimeout(name, "power-off after the ACPI power button", timeout)
        _force_off(vm, proc)
        _finish_off(ctx, vm, f"forced off: no ACPI power-off within {timeout:.0f} s")
        return Outcome(name, VmState.SHUTOFF, "forced off after the timeout")


def _force_off(vm: Vm, proc: process.QemuProcess) -> None:
    """End QEMU now: ``quit`` over QMP, then signals."""
    try:
        with Monitor(vm.paths.qmp_socket, timeout=3.0) as mon:
            mon.quit()
    except MonitorError:
        pass
    if not process.wait_exit(proc, 5.0):
        process.kill(proc)


def _finish_off(ctx: Corral, vm: Vm, reason: str) -> None:
    # QEMU's supervisor writes the exit record a moment after QEMU is gone: let it finish,
    # or it writes into the VM's directory after the clean-up (or while it is deleted).
    process.await_exit(vm.paths)
    process.clear_runtime(vm.paths)
    _set(ctx, vm.name, VmState.SHUTOFF, reason)


def destroy(ctx: Corral, name: str) -> Outcome:
    """Force a VM off at once, as pulling the power cord does.

    :raise StateError: the VM is not running.
    """
    with vm_lock(ctx, name):
        vm = _prepare(ctx, name, Op.DESTROY)
        proc = records.find_process(vm)
        if proc is not None:
            _force_off(vm, proc)
        _finish_off(ctx, vm, "destroyed")
        return Outcome(name, VmState.SHUTOFF, "destroyed")


def pause(ctx: Corral, name: str) -> Outcome:
    """Stop the vCPUs; memory and devices stay as they are.

    :raise StateError: the VM is not running.
    """
    return _set_vcpus(ctx, name, Op.PAUSE, VmState.PAUSED)


def resume(ctx: Corral, name: str) -> Outcome:
    """Let the vCPUs of a paused VM run again.

    :raise StateError: the VM is not paused.
    """
    return _set_vcpus(ctx, name, Op.RESUME, VmState.RUNNING)


def _set_vcpus(ctx: Corral, name: str, op: Op, state: VmState) -> Outcome:
    with vm_lock(ctx, name):
        vm = _prepare(ctx, name, op)
        with Monitor(vm.paths.qmp_socket) as mon:
            if state is VmState.PAUSED:
                mon.stop()
            else:
                mon.cont()
        _set(ctx, name, state, "paused" if state is VmState.PAUSED else "resumed")
        return Outcome(name, state)


def reboot(
    ctx: Corral,
    name: str,
    wait: bool = False,
    timeout: float = STOP_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
) -> Outcome:
    """Reboot cleanly: ACPI power-off with QEMU told to hold, then reset and run again.

    The guest shuts down as for ``stop`` (its writes reach the disk); QEMU stays up, so the
    VM keeps its process, sockets and console. A guest that ignores the power button is
    reset after ``timeout`` seconds.

    :raise StateError: the VM is not running.
    """
    with vm_lock(ctx, name):
        vm = _prepare(ctx, name, Op.REBOOT)
        proc = records.find_process(vm)
        assert proc is not None
        offset = log_size(vm.paths.serial_log)
        detail = "rebooted"
        with Monitor(vm.paths.qmp_socket) as mon:
            mon.set_shutdown_action("pause")
            try:
                mon.system_powerdown()
                if mon.wait_event(["SHUTDOWN"], timeout) is None:
                    detail = f"reset: no ACPI power-off within {timeout:.0f} s"
                mon.system_reset()
                mon.wait_event(["RESET"], 10.0)
                if mon.query_status() != "running":
                    mon.cont()
            finally:
                mon.set_shutdown_action("poweroff")
        _set(ctx, name, VmState.RUNNING, detail)
        if not wait or vm.row.ready_marker is None:
            return Outcome(name, VmState.RUNNING, detail)
        seconds = _wait_ready(vm, proc, offset, ready_timeout)
        return Outcome(name, VmState.RUNNING, detail, seconds)
