"""VM records: loading, saving state changes, finding the QEMU process, reconciling."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from corral.compute.context import Corral
from corral.compute.reconcile import Observation, observed_state
from corral.compute.state import VmState, check_transition
from corral.errors import MonitorError, NotFound
from corral.qemu import process
from corral.qemu.monitor import Monitor
from corral.qemu.paths import DiskFiles, ImageLayer, VmPaths
from corral.spec.vm import VmSpec
from corral.store.models import VmRow, VolumeRow, utcnow

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


def vm_paths(
    ctx: Corral,
    spec: VmSpec,
    volumes: dict[str, ImageLayer] | None = None,
    disk_chain: str | None = None,
) -> VmPaths:
    """Where ``spec``'s files live: ``vms/<name>/``, disks chained to catalogue images.

    :param volumes: the attached volumes' files by device id (see :func:`attached_volumes`).
    :param disk_chain: the record's ``disk_chain`` (JSON: each disk's files, top first, that
        snapshots left); a disk it does not name is the single file ``<disk>.qcow2``. Its
        ``base`` (a linked clone's) names, per disk, the files of other VMs below those.
    """
    root = ctx.home.vm_dir(spec.name)
    saved = json.loads(disk_chain) if disk_chain else {}
    chains: dict[str, list[str]] = saved.get("disks", {})
    bases: dict[str, list[str]] = saved.get("base", {})
    disks: dict[str, DiskFiles] = {}
    for disk in spec.disks:
        files = chains.get(disk.name) or [f"{disk.name}.qcow2"]
        layers = [ImageLayer(str(root / file), "qcow2") for file in files]
        layers += [ImageLayer(file, "qcow2") for file in bases.get(disk.name, [])]
        if disk.image is not None:
            layers.append(ImageLayer(str(ctx.home.image_dir(disk.image) / IMAGE_FILE), "qcow2"))
        disks[disk.name] = DiskFiles(layers[0], tuple(layers[1:]))
    return VmPaths.for_dir(str(root), disks, volumes)


def attached_volumes(ctx: Corral, session: Session, vm_id: str) -> dict[str, ImageLayer]:
    """The files of the volumes attached to the VM ``vm_id``, by device id."""
    from corral.qemu.volume_nodes import device_id
    from corral.storage.volumes import check_volume_format, volume_path

    rows = session.scalars(select(VolumeRow).where(VolumeRow.attached_to == vm_id))
    found: dict[str, ImageLayer] = {}
    for row in rows:
        fmt = check_volume_format(row.format)
        found[device_id(row.id)] = ImageLayer(str(volume_path(ctx.home.root, row.id, fmt)), fmt)
    return found


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
    session = object_session(row)
    volumes = None if session is None else attached_volumes(ctx, session, row.id)
    return Vm(row, spec, vm_paths(ctx, spec, volumes, row.disk_chain))


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
