"""What the VM list and ``info`` show: state, size, and the host resources each VM uses."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import vm_lock
from corral.compute.ownership import project_names, resolve_project
from corral.compute.records import Vm
from corral.compute.state import VmState
from corral.errors import CorralError
from corral.qemu import process
from corral.store.models import ProjectRow, VmRow


@dataclass(frozen=True)
class DiskView:
    name: str
    path: str
    image: str | None
    provisioned: int
    used: int


@dataclass(frozen=True)
class VmView:
    """One row of the VM list; ``info`` shows the same with its disks and files."""

    name: str
    #: The name of the project it belongs to.
    project: str
    uuid: str
    state: str
    reason: str
    vcpus: int
    memory: int
    machine: str
    image: str | None
    provisioned: int
    used: int
    #: Host CPU use in percent of one core, while running.
    host_cpu: float | None
    #: Host resident memory in bytes, while running.
    host_memory: int | None
    pid: int | None
    created_at: str
    state_changed_at: str
    disks: list[DiskView] = field(default_factory=list)
    forwards: list[str] = field(default_factory=list)
    console: str | None = None
    vnc: str | None = None
    #: What ``corral launch`` recorded: instance type, key pair, cloud-init instance-id.
    instance_type: str | None = None
    keypair: str | None = None
    instance_id: str | None = None
    #: ``user@host:port`` that ``corral ssh`` logs in to, if a port is forwarded to 22.
    ssh: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_percent(vm: Vm, proc: process.QemuProcess, usage: process.Usage) -> float:
    """CPU use since the previous sample (kept in the VM's directory), else since start."""
    sample = Path(vm.paths.root) / "cpu.sample"
    now = time.monotonic()
    previous: tuple[float, float] | None = None
    try:
        data = json.loads(sample.read_text())
        if data["pid"] == proc.pid and data["start"] == proc.start_ticks:
            previous = (float(data["t"]), float(data["cpu"]))
    except (FileNotFoundError, ValueError, KeyError):
        pass
    with contextlib.suppress(OSError):
        sample.write_text(
            json.dumps(
                {"pid": proc.pid, "start": proc.start_ticks, "t": now, "cpu": usage.cpu_seconds}
            )
        )
    if previous is not None and now - previous[0] > 0.05:
        return 100.0 * (usage.cpu_seconds - previous[1]) / (now - previous[0])
    age = process.process_age(proc)
    return 100.0 * usage.cpu_seconds / age if age > 0 else 0.0


def view(vm: Vm, project: str) -> VmView:
    """The view of one VM as recorded (call :func:`records.reconcile` first for the truth).

    :param project: the name of its project.
    """
    from corral.storage.disks import disk_usage

    disks = []
    for disk in vm.spec.disks:
        top = vm.paths.disks[disk.name].top.path
        try:
            files = disk_usage(Path(top))
            provisioned, used = files.provisioned, files.used
        except CorralError:
            provisioned = used = 0
        disks.append(DiskView(disk.name, top, disk.image, provisioned, used))
    host_cpu: float | None = None
    host_memory: int | None = None
    proc = vm.process
    if proc is not None and vm.state.active:
        usage = process.usage(proc)
        if usage is not None:
            host_cpu = round(_cpu_percent(vm, proc, usage), 1)
            host_memory = usage.rss
    row = vm.row
    forwards = [
        f"{f.protocol}:{f.host_addr}:{f.host_port}->{f.guest_port}"
        for nic in vm.spec.nics
        for f in nic.forwards
    ]
    ssh = None
    for nic in vm.spec.nics:
        for f in nic.forwards:
            if f.protocol == "tcp" and f.guest_port == 22 and ssh is None:
                ssh = f"{row.ssh_user or 'root'}@{f.host_addr}:{f.host_port}"
    vnc = None
    if vm.spec.vnc is not None:
        vnc = (
            vm.paths.vnc_socket
            if vm.spec.vnc.listen == "unix"
            else f"127.0.0.1:{5900 + (vm.spec.vnc.display or 0)}"
        )
    return VmView(
        name=row.name,
        project=project,
        uuid=str(vm.spec.uuid),
        state=row.state,
        reason=row.reason,
        vcpus=vm.spec.vcpus,
        memory=vm.spec.memory,
        machine=vm.spec.machine,
        image=row.image,
        provisioned=sum(d.provisioned for d in disks),
        used=sum(d.used for d in disks),
        host_cpu=host_cpu,
        host_memory=host_memory,
        pid=row.pid if vm.state.active else None,
        created_at=row.created_at.isoformat(),
        state_changed_at=row.state_changed_at.isoformat(),
        disks=disks,
        forwards=forwards,
        console=vm.paths.serial_socket if vm.spec.serial.enabled else None,
        vnc=vnc,
        instance_type=row.instance_type,
        keypair=row.keypair,
        instance_id=row.instance_id,
        ssh=ssh,
    )


def _needs_reconcile(row: VmRow) -> bool:
    """Whether the record may disagree with the host: it is active, or still names a PID."""
    return VmState(row.state).active or row.pid is not None


def _reconciled(ctx: Corral, vm: Vm, ask_monitor: bool) -> None:
    """Reconcile an active VM if no other command holds it (that command knows better)."""
    if not _needs_reconcile(vm.row):
        return
    lock = vm_lock(ctx, vm.name)
    if lock.try_acquire():
        try:
            records.reconcile(vm, ask_monitor=ask_monitor)
        finally:
            lock.release()


def list_vms(
    ctx: Corral, include_inactive: bool = False, project: str | None = None
) -> list[VmView]:
    """VMs by name: the active ones, or all with ``include_inactive``.

    :param project: only the VMs of this project (by name); ``None`` for every project.
    :raise NotFound: there is no project ``project``.
    """
    out = []
    with ctx.db.session() as session:
        query = select(VmRow).order_by(VmRow.name)
        if project is not None:
            query = query.where(VmRow.project_id == resolve_project(session, project).id)
        names = project_names(session)
        for row in session.scalars(query):
            if not (include_inactive or _needs_reconcile(row)):
                continue  # inactive and nothing to reconcile: not listed, its spec not parsed
            vm = records.wrap(ctx, row)
            _reconciled(ctx, vm, ask_monitor=False)
            if include_inactive or vm.state.active:
                out.append(view(vm, names.get(row.project_id, row.project_id)))
    return out


def page_vms(
    ctx: Corral,
    where: ColumnElement[bool],
    states: Collection[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[VmView], int]:
    """One page of the VMs that ``where`` selects, by name, and how many there are in all.

    Only the records that may disagree with the host (active, or naming a PID) are
    reconciled first, so that ``states`` filters on the truth; then the page is chosen in SQL,
    and only its VMs are read in full (their specs parsed, their disks measured). A listing
    of a thousand stopped VMs reads a hundred of them.

    :param where: which records (a project scope, a name filter...).
    :param states: only VMs in one of these states (``None``: in any).
    """
    active = [s.value for s in VmState if s.active]
    with ctx.db.session() as session:
        stale = select(VmRow).where(where, or_(VmRow.state.in_(active), VmRow.pid.is_not(None)))
        for row in session.scalars(stale):
            _reconciled(ctx, records.wrap(ctx, row), ask_monitor=False)
    with ctx.db.session() as session:
        query = select(VmRow).where(where)
        if states is not None:
            query = query.where(VmRow.state.in_(sorted(states)))
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        names = project_names(session)
        rows = session.scalars(query.order_by(VmRow.name).limit(limit).offset(offset))
        views = [
            view(records.wrap(ctx, row), names.get(row.project_id, row.project_id)) for row in rows
        ]
    return views, total


def info(ctx: Corral, name: str, ask_monitor: bool = True) -> VmView:
    """One VM, reconciled with the host.

    :param ask_monitor: also ask QEMU over QMP whether it is paused (else only whether its
        process is alive).
    :raise NotFound: there is no such VM.
    """
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        _reconciled(ctx, vm, ask_monitor=ask_monitor)
        project = session.get(ProjectRow, vm.row.project_id)
        return view(vm, project.name if project is not None else vm.row.project_id)


def state_of(ctx: Corral, name: str) -> VmState:
    return VmState(info(ctx, name).state)
