"""Disk snapshots of VMs: take one, list the tree, revert to one, delete one.

The plans come from :mod:`corral.storage.snapshots` (pure); this module applies them under
the VM's lock:

* **create**, running or stopped: a new qcow2 overlay per writable disk, on the disk's top
  file (``qemu-img create -b <top> -F qcow2``: metadata only, so instant whatever the disk's
  size). While QEMU runs, the overlays are opened with ``blockdev-add`` and switched in by
  one QMP ``transaction`` of ``blockdev-snapshot`` actions, all disks or none. If anything
  fails, the added nodes are closed and the new files removed; no record is written. The
  snapshot's row and the VM's new chain are committed together, after the switch.
* **revert**, stopped only (a disk-only snapshot has no memory to go back to): new empty
  overlays on the snapshot's frozen files are made, the VM's chain recorded, then the old
  tops removed. Every other snapshot stays.
* **delete**, running or stopped: in :mod:`corral.compute.snapshot_merge` (its names are
  importable from here too): the snapshot's layer is merged into every layer built on it.

The records (the tree of rows, the VM's chain) are read and written through
:mod:`corral.compute.snapshot_state`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import Progress, holding, quiet
from corral.compute.records import Vm
from corral.compute.snapshot_merge import delete_snapshot, preview_delete
from corral.compute.snapshot_state import (
    Preview,
    chain_of,
    prepare,
    record_chain,
    runs,
    snapshot_rows,
    tree_of,
    vm_file,
)
from corral.compute.state import Op, VmState
from corral.errors import AlreadyExists, MonitorError
from corral.qemu import img, process, vmstate
from corral.qemu.argv import overlay_nodes
from corral.qemu.monitor import Monitor, snapshot_action
from corral.storage.disks import DISK_MODE
from corral.storage.snapshots import (
    CreatePlan,
    RevertPlan,
    Tree,
    all_chains,
    check_description,
    check_snapshot_name,
    describe_revert,
    plan_create,
    plan_revert,
)
from corral.store.models import SnapshotRow, as_utc

__all__ = [
    "Preview",
    "SnapshotView",
    "check_create",
    "create_snapshot",
    "delete_snapshot",
    "get_snapshot",
    "list_snapshots",
    "preview_delete",
    "preview_revert",
    "revert_op",
    "revert_snapshot",
]

#: Seconds saving or loading a guest's memory and device state may take.
STATE_TIMEOUT = 600.0


@dataclass(frozen=True)
class SnapshotView:
    """A snapshot as the listing shows it."""

    name: str
    description: str
    kind: str
    #: The parent snapshot's name; ``None`` for a root of the tree.
    parent: str | None
    #: Whether the VM's disks sit on it now.
    current: bool
    #: The VM's state when it was taken.
    vm_state: str
    created_at: datetime
    #: Frozen file of each disk.
    layers: dict[str, str]
    #: A ``memory`` snapshot's saved RAM and device state; ``None`` for a disk-only one.
    memory_file: str | None = None


# -- reading ----------------------------------------------------------------------------------


def list_snapshots(ctx: Corral, name: str) -> list[SnapshotView]:
    """VM ``name``'s snapshots, oldest first.

    :raise NotFound: no such VM.
    """
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        rows = snapshot_rows(session, vm)
        current = chain_of(vm).current
        names = {r.id: r.name for r in rows}
        return [
            SnapshotView(
                name=r.name,
                description=r.description,
                kind=r.kind,
                parent=names.get(r.parent_id) if r.parent_id else None,
                current=r.id == current,
                vm_state=r.vm_state,
                created_at=as_utc(r.created_at),
                layers=json.loads(r.layers),
                memory_file=r.memory_file,
            )
            for r in rows
        ]


def get_snapshot(ctx: Corral, name: str, snap: str) -> SnapshotView:
    """One snapshot of VM ``name``.

    :raise NotFound: no such VM or snapshot.
    """
    from corral.errors import NotFound

    for view in list_snapshots(ctx, name):
        if view.name == snap:
            return view
    raise NotFound("snapshot", f"{name}/{snap}")


def _new_overlay(path: Path, backing: Path) -> None:
    """A new empty qcow2 on ``backing`` (which the new file names by absolute path).

    :raise AlreadyExists: ``path`` exists.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, DISK_MODE))
    except FileExistsError as exc:
        raise AlreadyExists("disk", str(path)) from exc
    try:
        img.create_overlay(path, backing.absolute(), "qcow2")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _token() -> str:
    return secrets.token_hex(4)


# -- create -----------------------------------------------------------------------------------


def check_create(ctx: Corral, name: str, snap: str, description: str = "") -> None:
    """What can be checked before a snapshot is queued: its name, free in the VM.

    :raise InvalidInput: a bad name or description.
    :raise AlreadyExists: the VM has a snapshot of that name.
    :raise NotFound: no such VM.
    """
    check_snapshot_name(snap)
    check_description(description)
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        if any(r.name == snap for r in snapshot_rows(session, vm)):
            raise AlreadyExists("snapshot", f"{name}/{snap}")


def create_snapshot(
    ctx: Corral,
    name: str,
    snap: str,
    description: str = "",
    progress: Progress = quiet,
    memory: bool = False,
) -> SnapshotView:
    """Snapshot every writable disk of VM ``name``, running or not, atomically; with
    ``memory``, also the guest's RAM and device state, at the same paused moment.

    With ``memory`` the guest is paused, its state saved (and checked complete) to a file
    beside the disks' layers, the disks switched to new overlays, and the guest resumed
    (a paused one stays paused).

    :raise InvalidInput: a bad name or description.
    :raise AlreadyExists: the name is taken.
    :raise StateError: the VM is starting or stopping; with ``memory``, not running or paused.
    :raise MonitorError: QEMU refused the switch or the save (nothing is left of the attempt).
    :raise ToolError: qemu-img could not make an overlay (likewise).
    """
    check_snapshot_name(snap)
    check_description(description)
    with holding(ctx, name, progress):
        prepare(ctx, name, Op.SNAPSHOT_MEMORY if memory else Op.SNAPSHOT)
        progress(10, "making overlays")
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            tree, chain = tree_of(snapshot_rows(session, vm)), chain_of(vm)
            plan = plan_create(tree, chain, str(uuid.uuid4()), snap, _token(), memory)
            made: list[Path] = []
            try:
                for overlay in plan.overlays:
                    path = vm_file(vm, overlay.overlay)
                    _new_overlay(path, vm_file(vm, overlay.frozen))
                    made.append(path)
                if plan.node.memory is not None:
                    progress(30, "saving the guest's memory and device state")
                    made.append(vm_file(vm, plan.node.memory))
                    _save_and_switch(vm, plan, made[-1])
                elif runs(vm):
                    progress(50, "switching the disks to the overlays")
                    with Monitor(vm.paths.qmp_socket) as mon:
                        _switch_live(mon, vm, plan)
                session.add(
                    SnapshotRow(
                        id=plan.node.id,
                        vm_id=vm.row.id,
                        name=snap,
                        description=description,
                        kind=plan.node.kind,
                        memory_file=plan.node.memory,
                        parent_id=plan.node.parent,
                        layers=json.dumps(dict(plan.node.layers), sort_keys=True),
                        vm_state=vm.state.value,
                    )
                )
                record_chain(vm, Tree({**tree.nodes, plan.node.id: plan.node}), plan.chain)
                session.flush()
            except BaseException:
                for path in made:
                    path.unlink(missing_ok=True)
                raise
        progress(95, f"snapshot {snap} taken")
    return get_snapshot(ctx, name, snap)


def _switch_live(mon: Monitor, vm: Vm, plan: CreatePlan) -> None:
    """Open the new overlays in QEMU and put them on the disks in one transaction; on any
    failure close what was opened.

    :raise MonitorError: QEMU refused (the guest goes on writing to its old files).
    """
    specs = {d.name: d for d in vm.spec.disks}
    added: list[str] = []
    try:
        actions = []
        for overlay in plan.overlays:
            top = mon.node_for_file(str(vm_file(vm, overlay.frozen)))
            tag = "s" + overlay.overlay.rsplit("-", 1)[1].removesuffix(".qcow2")
            nodes = overlay_nodes(specs[overlay.disk], str(vm_file(vm, overlay.overlay)), tag)
            for node in nodes:
                mon.blockdev_add(node)
                added.append(str(node["node-name"]))
            actions.append(snapshot_action(top, str(nodes[-1]["node-name"])))
        mon.transaction(actions)
    except BaseException:
        for node_name in reversed(added):
            with contextlib.suppress(MonitorError):
                mon.blockdev_del(node_name)
        raise


def _save_and_switch(vm: Vm, plan: CreatePlan, state: Path) -> None:
    """Pause the guest, save its state to ``state``, switch its disks to the new overlays
    while it is still paused, then let it run again if it ran.

    The save comes first: QEMU flushes the disks as it completes, so the frozen files hold
    exactly what the saved state has seen. On failure the guest runs on as it did, on its
    old files (the caller removes ``state`` and the overlays).

    :raise MonitorError: QEMU refused the save or the switch.
    """
    was_running = vm.state is VmState.RUNNING
    with Monitor(vm.paths.qmp_socket) as mon:
        if was_running:
            mon.stop()
        try:
            vmstate.save(mon, state, DISK_MODE, STATE_TIMEOUT)
            _switch_live(mon, vm, plan)
        except BaseException:
            if was_running:
                with contextlib.suppress(MonitorError):
                    mon.cont()
            raise
        if was_running:
            mon.cont()


# -- revert -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Revert:
    """A revert's plan and what its preview needs to know."""

    plan: RevertPlan
    #: Whether the tops hold data written since the last snapshot.
    unsaved: bool
    #: Whether QEMU runs the VM now.
    running: bool
    #: The VM's state when the target was taken.
    taken_in: str

    def describe(self, vm: str) -> list[str]:
        return describe_revert(self.plan, vm, self.unsaved, self.running, self.taken_in)


def _revert_plan(ctx: Corral, name: str, snap: str) -> _Revert:
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        rows = snapshot_rows(session, vm)
        tree, chain = tree_of(rows), chain_of(vm)
        plan = plan_revert(tree, chain, snap, name, _token())
        unsaved = any(img.has_own_data(vm_file(vm, top)) for top in plan.discarded)
        taken_in = next(r.vm_state for r in rows if r.id == plan.target.id)
        return _Revert(plan, unsaved, runs(vm), taken_in)


def revert_op(ctx: Corral, name: str, snap: str) -> Op:
    """The operation reverting to ``snap`` is (its states differ for memory snapshots).

    :raise NotFound: no such VM or snapshot.
    """
    return Op.REVERT if get_snapshot(ctx, name, snap).kind == "disk" else Op.REVERT_MEMORY


def preview_revert(ctx: Corral, name: str, snap: str) -> Preview:
    """What reverting VM ``name`` to ``snap`` loses and keeps; nothing changes.

    :raise NotFound: no such VM or snapshot.
    """
    return Preview(_revert_plan(ctx, name, snap).describe(name))


def revert_snapshot(ctx: Corral, name: str, snap: str, progress: Progress = quiet) -> Preview:
    """Put VM ``name``'s disks back to snapshot ``snap``; what was written since the VM's
    last snapshot is thrown away. A memory snapshot also puts the guest back where it was,
    running or paused, from any state: a running VM is destroyed first.

    :raise NotFound: no such snapshot.
    :raise StateError: a disk-only snapshot and the VM is not stopped ("stop it first").
    :raise LaunchError: QEMU did not start (the VM is left shut off on its former disks).
    :raise MonitorError: QEMU could not load the saved state (likewise).
    """
    with holding(ctx, name, progress):
        if revert_op(ctx, name, snap) is Op.REVERT_MEMORY:
            return _revert_memory(ctx, name, snap, progress)
        prepare(ctx, name, Op.REVERT)
        revert = _revert_plan(ctx, name, snap)
        plan, said = revert.plan, revert.describe(name)
        progress(30, f"making overlays on snapshot {snap}")
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            made: list[Path] = []
            try:
                for overlay in plan.overlays:
                    path = vm_file(vm, overlay.overlay)
                    _new_overlay(path, vm_file(vm, overlay.frozen))
                    made.append(path)
                record_chain(vm, tree_of(snapshot_rows(session, vm)), plan.chain)
                session.flush()
            except BaseException:
                for path in made:
                    path.unlink(missing_ok=True)
                raise
        progress(80, "removing the discarded overlays")
        for top in plan.discarded:
            vm_file(vm, top).unlink(missing_ok=True)
        progress(95, f"reverted to {snap}")
        return Preview(said)


def _revert_memory(ctx: Corral, name: str, snap: str, progress: Progress) -> Preview:
    """Revert to a memory snapshot (the caller holds the lock): destroy a running VM, make
    overlays on the snapshot's layers, start QEMU waiting for a state, load it and resume.
    The new chain is recorded, and the discarded tops removed, only once the guest is back.
    """
    from corral.compute import lifecycle
    from corral.qemu.argv import build_argv, incoming_argv
    from corral.spec.validate import validate_spec

    prepare(ctx, name, Op.REVERT_MEMORY)
    revert = _revert_plan(ctx, name, snap)
    plan, said = revert.plan, revert.describe(name)
    assert plan.target.memory is not None
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        tree = tree_of(snapshot_rows(session, vm))
    validate_spec(vm.spec, ctx.caps)
    back = VmState.DEFINED if vm.state is VmState.DEFINED else VmState.SHUTOFF
    if revert.running:
        progress(10, "destroying the running VM")
        old = records.find_process(vm)
        if old is not None:
            lifecycle.force_off(vm, old)
        lifecycle.finish_off(ctx, vm, f"destroyed to revert to snapshot {snap}")
    progress(20, f"making overlays on snapshot {snap}")
    made: list[Path] = []
    chain_json = json.dumps(
        {"current": plan.chain.current, "disks": all_chains(tree, plan.chain)}, sort_keys=True
    )
    proc: process.QemuProcess | None = None
    try:
        for overlay in plan.overlays:
            path = vm_file(vm, overlay.overlay)
            _new_overlay(path, vm_file(vm, overlay.frozen))
            made.append(path)
        paths = records.vm_paths(ctx, vm.spec, vm.paths.volumes, chain_json)
        argv = build_argv(vm.spec, ctx.caps, paths) + incoming_argv()
        with ctx.db.session() as session:
            records.set_state(records.load(ctx, session, name), VmState.STARTING, "reverting")
        progress(40, "starting QEMU to load the saved state")
        proc = process.launch(argv, paths)
        progress(50, "loading the memory and device state")
        state = VmState.PAUSED if revert.taken_in == VmState.PAUSED.value else VmState.RUNNING
        with Monitor(paths.qmp_socket) as mon:
            vmstate.load(mon, vm_file(vm, plan.target.memory), STATE_TIMEOUT)
            if state is VmState.RUNNING:
                mon.cont()
        with ctx.db.session() as session:
            now = records.load(ctx, session, name)
            records.set_state(now, state, f"reverted to snapshot {snap}", proc)
            record_chain(now, tree, plan.chain)
    except BaseException as exc:
        _undo_start(ctx, vm, proc, back, f"revert to {snap} failed: {exc}")
        for path in made:
            path.unlink(missing_ok=True)
        raise
    progress(80, "removing the discarded overlays")
    for top in plan.discarded:
        vm_file(vm, top).unlink(missing_ok=True)
    progress(95, f"reverted to {snap}")
    return Preview(said)


def _undo_start(
    ctx: Corral, vm: Vm, proc: process.QemuProcess | None, back: VmState, reason: str
) -> None:
    """End a QEMU a failed revert started and record the VM as ``back`` again."""
    if proc is not None and process.is_alive(proc):
        process.kill(proc, grace=2.0)
    process.await_exit(vm.paths)
    process.clear_runtime(vm.paths)
    with ctx.db.session() as session:
        now = records.load(ctx, session, vm.name)
        if now.state is VmState.STARTING:
            records.set_state(now, back, reason)
