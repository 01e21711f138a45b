"""VM records: loading, saving state changes, finding the QEMU process, reconciling."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.compute.context import Corral
from corral.compute.reconcile import Observation, observed_state
from corral.compute.state import VmState, check_transition
from corral.errors import MonitorError, NotFound
from corral.qemu import process
from corral.qemu.monitor import Monitor
from corral.qemu.paths import DiskFiles, ImageLayer, VmPaths
from corral.spec.vm import VmSpec
from corral.store.models import VmRow, utcnow

#: A base image's file inside the catalogue.
IMAGE_FILE = "disk.qcow2"


@dataclass
class Vm:
    """A VM's record with its parsed spec and file layout."""

    row: VmRow
    spec: VmSpec
    paths: VmPaths

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def state(self) -> VmState:
        return VmState(self.row.state)

    @property
    def process(self) -> process.QemuProcess | None:
        if self.row.pid is None or self.row.pid_start is None:
            return None
        return process.QemuProcess(self.row.pid, self.row.pid_start)


def vm_paths(ctx: Corral, spec: VmSpec) -> VmPaths:
    """Where ``spec``'s files live: ``vms/<name>/``, disks chained to catalogue images."""
    root = ctx.home.vm_dir(spec.name)
    disks: dict[str, DiskFiles] = {}
    for disk in spec.disks:
        top = ImageLayer(str(root / f"{disk.name}.qcow2"), "qcow2")
        backing: tuple[ImageLayer, ...] = ()
        if disk.image is not None:
            backing = (ImageLayer(str(ctx.home.image_dir(disk.image) / IMAGE_FILE), "qcow2"),)
        disks[disk.name] = DiskFiles(top, backing)
    return VmPaths.for_dir(str(root), disks)


def load(ctx: Corral, session: Session, name: str) -> Vm:
    """The VM called ``name``.

    :raise NotFound: there is none.
    """
    row = session.scalars(select(VmRow).where(VmRow.name == name)).first()
    if row is None:
        raise NotFound("vm", name)
    return wrap(ctx, row)


def wrap(ctx: Corral, row: VmRow) -> Vm:
    spec = VmSpec.model_validate_json(row.spec)
    return Vm(row, spec, vm_paths(ctx, spec))


def set_state(
    vm: Vm,
    new: VmState,
    reason: str | None = None,
    proc: process.QemuProcess | None = None,
) -> None:
    """Record a state change (checked against the transition table).

    :param proc: the QEMU process while active; cleared when the VM becomes inactive.
    :raise StateError: the transition table has no such edge.
    """
    check_transition(vm.name, vm.state, new)
    row = vm.row
    if new != vm.state:
        row.state_changed_at = utcnow()
    row.state = new.value
    if reason is not None:
        row.reason = reason
    if proc is not None:
        row.pid, row.pid_start = proc.pid, proc.start_ticks
        if row.started_at is None or new is VmState.STARTING:
            row.started_at = utcnow()
    if not new.active:
        row.pid = row.pid_start = None
        row.started_at = None


def find_process(vm: Vm) -> process.QemuProcess | None:
    """The VM's QEMU process if alive: from the record, else from the runtime files.

    A command killed between launching QEMU and recording its PID leaves only the runtime
    files; the process found there must hold this VM's QMP socket to be adopted.
    """
    proc = vm.process
    if proc is not None:
        return proc if process.is_alive(proc) else None
    root = Path(vm.paths.root)
    candidates: list[int] = []
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        candidates.append(int(json.loads((root / "runtime.json").read_text())["pid"]))
    with contextlib.suppress(FileNotFoundError, ValueError):
        candidates.append(int(Path(vm.paths.pidfile).read_text().strip()))
    for pid in candidates:
        ticks = process.start_ticks(pid)
        if ticks is None:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(vm.paths.qmp_socket.encode() in arg for arg in cmdline):
            return process.QemuProcess(pid, ticks)
    return None


def reconcile(vm: Vm, ask_monitor: bool = True) -> VmState:
    """Bring the record in line with the host (caller holds the VM's lock).

    :param ask_monitor: also ask QEMU's run state (paused/running) over QMP.
    :return: the state now recorded.
    """
    recorded = vm.state
    if not recorded.active and vm.row.pid is None:
        return recorded
    proc = find_process(vm)
    status: str | None = None
    if proc is not None and ask_monitor:
        try:
            with Monitor(vm.paths.qmp_socket, timeout=5.0) as mon:
                status = mon.query_status()
        except MonitorError:
            status = None
    seen = Observation(
        alive=proc is not None,
        exit=None if proc is not None else process.await_exit(vm.paths),
        qmp_status=status,
    )
    new, reason = observed_state(recorded, seen)
    if new != recorded or (proc is not None and vm.process != proc):
        set_state(vm, new, reason, proc)
    if not new.active:
        process.clear_runtime(vm.paths)
    return new
