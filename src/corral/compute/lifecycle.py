"""Running VMs: start, stop, destroy, pause, resume, reboot.

Each operation holds the VM's lock from start to end, so two commands on one VM are
serialised. State changes are committed as they happen (``starting`` before QEMU is launched,
``running`` once it answers), never inside a long wait, so a command killed at any point
leaves a record that :func:`corral.compute.records.reconcile` understands.

An operation tells its :data:`Progress` what it is doing: that it waits for the lock while
another operation holds the VM, then each phase, the first once it holds the lock and the
last before it lets go (a task's progress shows the one after the other).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.compute.records import Vm
from corral.compute.serial import log_size, wait_for_line
from corral.compute.state import Op, VmState, require
from corral.compute.vm_ports import sync_for_start
from corral.errors import GuestTimeout, HostError, LaunchError, MonitorError
from corral.qemu import process
from corral.qemu.monitor import Monitor

#: Default seconds a guest gets to boot to its ready marker.
READY_TIMEOUT = 120.0
#: Default seconds a guest gets to power off after the ACPI button.
STOP_TIMEOUT = 60.0

#: What an operation reports as it goes: percent done (0-100) and what it is doing.
Progress = Callable[[int, str], None]


def quiet(percent: int, detail: str) -> None:
    """A :data:`Progress` that reports nowhere."""
    del percent, detail


@dataclass(frozen=True)
class Outcome:
    """What an operation did, for the CLI to report."""

    name: str
    state: VmState
    detail: str = ""
    seconds: float | None = None


def vm_lock(ctx: Corral, name: str, wait: float = 120.0) -> ObjectLock:
    """The lock that serialises commands on VM ``name``.

    :param wait: seconds :meth:`~ObjectLock.acquire` waits for another holder.
    """
    return ObjectLock(ctx.home.locks, "vm", name, wait=wait)


@contextmanager
def holding(ctx: Corral, name: str, progress: Progress = quiet) -> Iterator[None]:
    """VM ``name``'s lock for the block; while another operation holds it, ``progress``
    says that this one waits.

    :raise Busy: the other operation held it for longer than the lock's wait.
    """
    lock = vm_lock(ctx, name)
    if not lock.try_acquire():
        progress(0, f"waiting for vm {name}: another operation holds it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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


def start(
    ctx: Corral,
    name: str,
    wait: bool = False,
    timeout: float = READY_TIMEOUT,
    progress: Progress = quiet,
) -> Outcome:
    """Boot a VM; with ``wait``, return once its ready marker is on the serial console.

    :raise StateError: the VM is not defined, shut off or crashed.
    :raise LaunchError: QEMU did not start (the VM is left as it was).
    :raise GuestTimeout: with ``wait``, no ready marker in time (the VM is left running).
    """
    from corral.compute.usb import check_host_devices_of
    from corral.qemu.argv import build_argv
    from corral.spec.validate import validate_spec

    with holding(ctx, name, progress):
        vm = _prepare(ctx, name, Op.START)
        progress(10, "launching QEMU")
        previous = vm.state
        validate_spec(vm.spec, ctx.caps)
        check_host_devices_of(ctx.home, vm.spec)
        argv = build_argv(vm.spec, ctx.caps, vm.paths)
        sync_for_start(ctx, vm.spec)  # the taps QEMU opens, the guests' leases and names
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
        _set_links(vm)
        progress(50, f"QEMU runs (pid {proc.pid})")
        if not wait or vm.row.ready_marker is None:
            return Outcome(name, VmState.RUNNING, f"pid {proc.pid}")
        progress(60, "waiting for the guest to be ready")
        seconds = _wait_ready(vm, proc, offset, timeout)
        progress(95, f"guest ready in {seconds:.1f} s")
        return Outcome(name, VmState.RUNNING, "ready", seconds)


def _set_links(vm: Vm) -> None:
    """Bring down the carrier of the NICs whose spec says so (every card starts with it up).

    :raise MonitorError: QEMU refused.
    """
    from corral.qemu.nic_nodes import set_link

    changes = [args for i in range(len(vm.spec.nics)) if (args := set_link(vm.spec, i))]
    if not changes:
        return
    with Monitor(vm.paths.qmp_socket) as mon:
        for args in changes:
            mon.execute("set_link", args)


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


def stop(
    ctx: Corral,
    name: str,
    timeout: float = STOP_TIMEOUT,
    force: bool = True,
    progress: Progress = quiet,
) -> Outcome:
    """Shut a VM down through ACPI; after ``timeout`` seconds, force it off if ``force``.

    :raise StateError: the VM is not running.
    :raise GuestTimeout: the guest ignored the power button and ``force`` is off.
    """
    with holding(ctx, name, progress):
        vm = _prepare(ctx, name, Op.STOP)
        proc = records.find_process(vm)
        assert proc is not None
        _set(ctx, name, VmState.STOPPING, "ACPI power button pressed")
        progress(10, "ACPI power button pressed")
        try:
            with Monitor(vm.paths.qmp_socket) as mon:
                mon.system_powerdown()
        except MonitorError:
            if process.is_alive(proc):
                raise
        if process.wait_exit(proc, timeout):
            finish_off(ctx, vm, "stopped")
            progress(95, "guest powered off")
            return Outcome(name, VmState.SHUTOFF, "guest powered off")
        if not force:
            _set(ctx, name, VmState.RUNNING, "guest ignored the ACPI power button")
            raise GuestTimeout(name, "power-off after the ACPI power button", timeout)
        progress(80, f"no ACPI power-off within {timeout:.0f} s: forcing off")
        force_off(vm, proc)
        finish_off(ctx, vm, f"forced off: no ACPI power-off within {timeout:.0f} s")
        progress(95, "forced off")
        return Outcome(name, VmState.SHUTOFF, "forced off after the timeout")


def force_off(vm: Vm, proc: process.QemuProcess) -> None:
    """End QEMU now: ``quit`` over QMP, then signals."""
    try:
        with Monitor(vm.paths.qmp_socket, timeout=3.0) as mon:
            mon.quit()
    except MonitorError:
        pass
    if not process.wait_exit(proc, 5.0):
        process.kill(proc)


def finish_off(ctx: Corral, vm: Vm, reason: str) -> None:
    """Record a VM whose QEMU has ended as shut off for ``reason``, its runtime files gone."""
    # QEMU's supervisor writes the exit record a moment after QEMU is gone: let it finish,
    # or it writes into the VM's directory after the clean-up (or while it is deleted).
    process.await_exit(vm.paths)
    process.clear_runtime(vm.paths)
    _set(ctx, vm.name, VmState.SHUTOFF, reason)


def destroy(ctx: Corral, name: str, progress: Progress = quiet) -> Outcome:
    """Force a VM off at once, as pulling the power cord does.

    :raise StateError: the VM is not running.
    """
    with holding(ctx, name, progress):
        vm = _prepare(ctx, name, Op.DESTROY)
        progress(10, "forcing off")
        proc = records.find_process(vm)
        if proc is not None:
            force_off(vm, proc)
        finish_off(ctx, vm, "destroyed")
        progress(95, "destroyed")
        return Outcome(name, VmState.SHUTOFF, "destroyed")


def pause(ctx: Corral, name: str, progress: Progress = quiet) -> Outcome:
    """Stop the vCPUs; memory and devices stay as they are.

    :raise StateError: the VM is not running.
    """
    return _set_vcpus(ctx, name, Op.PAUSE, VmState.PAUSED, progress)


def resume(ctx: Corral, name: str, progress: Progress = quiet) -> Outcome:
    """Let the vCPUs of a paused VM run again.

    :raise StateError: the VM is not paused.
    """
    return _set_vcpus(ctx, name, Op.RESUME, VmState.RUNNING, progress)


def _set_vcpus(ctx: Corral, name: str, op: Op, state: VmState, progress: Progress) -> Outcome:
    pausing = state is VmState.PAUSED
    with holding(ctx, name, progress):
        vm = _prepare(ctx, name, op)
        progress(10, "stopping the vCPUs" if pausing else "letting the vCPUs run")
        with Monitor(vm.paths.qmp_socket) as mon:
            if pausing:
                mon.stop()
            else:
                mon.cont()
        _set(ctx, name, state, "paused" if pausing else "resumed")
        progress(95, state.value)
        return Outcome(name, state)


def reboot(
    ctx: Corral,
    name: str,
    wait: bool = False,
    timeout: float = STOP_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
    progress: Progress = quiet,
) -> Outcome:
    """Reboot cleanly: ACPI power-off with QEMU told to hold, then reset and run again.

    The guest shuts down as for ``stop`` (its writes reach the disk); QEMU stays up, so the
    VM keeps its process, sockets and console. A guest that ignores the power button is
    reset after ``timeout`` seconds.

    :raise StateError: the VM is not running.
    """
    with holding(ctx, name, progress):
        vm = _prepare(ctx, name, Op.REBOOT)
        proc = records.find_process(vm)
        assert proc is not None
        offset = log_size(vm.paths.serial_log)
        progress(10, "ACPI power button pressed")
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
        progress(50, detail)
        if not wait or vm.row.ready_marker is None:
            return Outcome(name, VmState.RUNNING, detail)
        progress(60, "waiting for the guest to be ready")
        seconds = _wait_ready(vm, proc, offset, ready_timeout)
        progress(95, f"guest ready in {seconds:.1f} s")
        return Outcome(name, VmState.RUNNING, detail, seconds)
