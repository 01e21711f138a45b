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
* **delete**, running or stopped: the snapshot's frozen file is merged into the one file
  built on it (``block-stream`` by QEMU when that file is in the running chain, a safe
  ``qemu-img rebase`` otherwise), which is then backed by what backed the deleted layer.
  Only that one file is written: never another snapshot's layer, never the shared image.
  Then the row goes and the files are removed. A merge that stops half-way leaves data
  intact (the file built on the layer holds a copy of what it read through it) and the
  same delete can be run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import Progress, holding, quiet
from corral.compute.records import Vm
from corral.compute.state import Op, VmState, require
from corral.errors import AlreadyExists, CorralError, MonitorError
from corral.qemu import img, process, vmstate
from corral.qemu.argv import overlay_nodes
from corral.qemu.monitor import Monitor, snapshot_action
from corral.storage.disks import DISK_MODE
from corral.storage.snapshots import (
    Chain,
    CreatePlan,
    DeletePlan,
    Merge,
    RevertPlan,
    SnapNode,
    Tree,
    all_chains,
    check_description,
    check_snapshot_name,
    describe_delete,
    describe_revert,
    plan_create,
    plan_delete,
    plan_revert,
)
from corral.store.models import SnapshotRow, as_utc

#: Seconds a merge by QEMU may take before the delete fails (the data stays intact).
MERGE_TIMEOUT = 3600.0
#: Seconds between checks that QEMU still runs a merge (a QEMU that died sends no event).
JOB_CHECK = 1.0
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


def _rows(session: Session, vm: Vm) -> list[SnapshotRow]:
    query = select(SnapshotRow).where(SnapshotRow.vm_id == vm.row.id)
    return list(session.scalars(query.order_by(SnapshotRow.created_at, SnapshotRow.name)))


def _tree(rows: list[SnapshotRow]) -> Tree:
    return Tree(
        {
            r.id: SnapNode(r.id, r.name, r.parent_id, json.loads(r.layers), r.memory_file)
            for r in rows
        }
    )


def _chain(vm: Vm) -> Chain:
    """Where the VM's disks are: from the record, or ``<disk>.qcow2`` for each writable disk."""
    if vm.row.disk_chain:
        saved = json.loads(vm.row.disk_chain)
        return Chain(saved["current"], {d: files[0] for d, files in saved["disks"].items()})
    return Chain.initial([d.name for d in vm.spec.disks if not d.readonly])


def _record_chain(vm: Vm, tree: Tree, chain: Chain) -> None:
    data = {"current": chain.current, "disks": all_chains(tree, chain)}
    if vm.row.disk_chain and "base" in (saved := json.loads(vm.row.disk_chain)):
        data["base"] = saved["base"]  # a linked clone's: files of another VM below its own
    vm.row.disk_chain = json.dumps(data, sort_keys=True)


def list_snapshots(ctx: Corral, name: str) -> list[SnapshotView]:
    """VM ``name``'s snapshots, oldest first.

    :raise NotFound: no such VM.
    """
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        rows = _rows(session, vm)
        current = _chain(vm).current
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


def _file(vm: Vm, name: str) -> Path:
    return Path(vm.paths.root) / name


def _image(vm: Vm, disk: str) -> str | None:
    """The file below a disk's own chain: its image (a linked clone: the source's layer)."""
    for layer in vm.paths.disks[disk].backing:
        if not layer.path.startswith(vm.paths.root + "/"):
            return layer.path
    return None


def _prepare(ctx: Corral, name: str, op: Op) -> None:
    """Reconcile VM ``name`` and check ``op`` may run in its state (caller holds the lock)."""
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        records.reconcile(vm)
        require(name, op, vm.state)


def _live(vm: Vm) -> bool:
    return vm.state in (VmState.RUNNING, VmState.PAUSED)


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
        if any(r.name == snap for r in _rows(session, vm)):
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
        _prepare(ctx, name, Op.SNAPSHOT_MEMORY if memory else Op.SNAPSHOT)
        progress(10, "making overlays")
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            tree, chain = _tree(_rows(session, vm)), _chain(vm)
            plan = plan_create(tree, chain, str(uuid.uuid4()), snap, _token(), memory)
            made: list[Path] = []
            try:
                for overlay in plan.overlays:
                    path = _file(vm, overlay.overlay)
                    _new_overlay(path, _file(vm, overlay.frozen))
                    made.append(path)
                if plan.node.memory is not None:
                    progress(30, "saving the guest's memory and device state")
                    made.append(_file(vm, plan.node.memory))
                    _save_and_switch(vm, plan, made[-1])
                elif _live(vm):
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
                _record_chain(vm, Tree({**tree.nodes, plan.node.id: plan.node}), plan.chain)
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
            top = mon.node_for_file(str(_file(vm, overlay.frozen)))
            tag = "s" + overlay.overlay.rsplit("-", 1)[1].removesuffix(".qcow2")
            nodes = overlay_nodes(specs[overlay.disk], str(_file(vm, overlay.overlay)), tag)
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
class Preview:
    """What an operation will do, in lines for a person."""

    lines: list[str]


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
        rows = _rows(session, vm)
        tree, chain = _tree(rows), _chain(vm)
        plan = plan_revert(tree, chain, snap, name, _token())
        unsaved = any(img.has_own_data(_file(vm, top)) for top in plan.discarded)
        taken_in = next(r.vm_state for r in rows if r.id == plan.target.id)
        return _Revert(plan, unsaved, _live(vm), taken_in)


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
        _prepare(ctx, name, Op.REVERT)
        revert = _revert_plan(ctx, name, snap)
        plan, said = revert.plan, revert.describe(name)
        progress(30, f"making overlays on snapshot {snap}")
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            made: list[Path] = []
            try:
                for overlay in plan.overlays:
                    path = _file(vm, overlay.overlay)
                    _new_overlay(path, _file(vm, overlay.frozen))
                    made.append(path)
                _record_chain(vm, _tree(_rows(session, vm)), plan.chain)
                session.flush()
            except BaseException:
                for path in made:
                    path.unlink(missing_ok=True)
                raise
        progress(80, "removing the discarded overlays")
        for top in plan.discarded:
            _file(vm, top).unlink(missing_ok=True)
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

    _prepare(ctx, name, Op.REVERT_MEMORY)
    revert = _revert_plan(ctx, name, snap)
    plan, said = revert.plan, revert.describe(name)
    assert plan.target.memory is not None
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        tree = _tree(_rows(session, vm))
    validate_spec(vm.spec, ctx.caps)
    back = VmState.DEFINED if vm.state is VmState.DEFINED else VmState.SHUTOFF
    if revert.running:
        progress(10, "destroying the running VM")
        old = records.find_process(vm)
        if old is not None:
            lifecycle._force_off(vm, old)
        lifecycle._finish_off(ctx, vm, f"destroyed to revert to snapshot {snap}")
    progress(20, f"making overlays on snapshot {snap}")
    made: list[Path] = []
    chain_json = json.dumps(
        {"current": plan.chain.current, "disks": all_chains(tree, plan.chain)}, sort_keys=True
    )
    proc: process.QemuProcess | None = None
    try:
        for overlay in plan.overlays:
            path = _file(vm, overlay.overlay)
            _new_overlay(path, _file(vm, overlay.frozen))
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
            vmstate.load(mon, _file(vm, plan.target.memory), STATE_TIMEOUT)
            if state is VmState.RUNNING:
                mon.cont()
        with ctx.db.session() as session:
            now = records.load(ctx, session, name)
            records.set_state(now, state, f"reverted to snapshot {snap}", proc)
            _record_chain(now, tree, plan.chain)
    except BaseException as exc:
        _undo_start(ctx, vm, proc, back, f"revert to {snap} failed: {exc}")
        for path in made:
            path.unlink(missing_ok=True)
        raise
    progress(80, "removing the discarded overlays")
    for top in plan.discarded:
        _file(vm, top).unlink(missing_ok=True)
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


# -- delete -----------------------------------------------------------------------------------


def _delete_plan(ctx: Corral, name: str, snap: str) -> tuple[DeletePlan, bool]:
    """The plan, and whether the VM runs."""
    from corral.compute.clone import check_no_linked_clones

    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        plan = plan_delete(_tree(_rows(session, vm)), _chain(vm), snap, name)
        removed = [str(_file(vm, f)) for f in plan.removed]
        check_no_linked_clones(session, "snapshot", f"{name}/{snap}", removed)
        return plan, _live(vm)


def preview_delete(ctx: Corral, name: str, snap: str) -> Preview:
    """What deleting snapshot ``snap`` merges into what; nothing changes.

    :raise NotFound: no such VM or snapshot.
    :raise Conflict: two layers are built on the snapshot.
    """
    plan, running = _delete_plan(ctx, name, snap)
    return Preview(describe_delete(plan, name, running))


def delete_snapshot(ctx: Corral, name: str, snap: str, progress: Progress = quiet) -> Preview:
    """Delete snapshot ``snap`` of VM ``name`` (running or not), merging its layer into the
    one built on it.

    :raise NotFound: no such snapshot.
    :raise Conflict: two layers are built on it.
    :raise StateError: the VM is starting or stopping.
    :raise MonitorError: QEMU's merge failed (data intact; the delete can be run again).
    :raise ToolError: qemu-img's merge failed (likewise).
    """
    with holding(ctx, name, progress):
        _prepare(ctx, name, Op.SNAPSHOT_DELETE)
        plan, running = _delete_plan(ctx, name, snap)
        said = describe_delete(plan, name, running)
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
        for index, merge in enumerate(plan.merges):
            progress(
                10 + 70 * index // len(plan.merges), f"merging {merge.layer} into {merge.into}"
            )
            _merge(vm, merge)
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            rows = {r.id: r for r in _rows(session, vm)}
            for node_id, node in plan.tree.nodes.items():
                rows[node_id].parent_id = node.parent
            session.flush()
            session.delete(rows[plan.target.id])
            _record_chain(vm, plan.tree, plan.chain)
        progress(90, "removing the merged files")
        for file in plan.removed:
            _file(vm, file).unlink(missing_ok=True)
        progress(95, f"snapshot {snap} deleted")
        return Preview(said)


def _merge(vm: Vm, merge: Merge) -> None:
    """Copy ``merge.layer`` into ``merge.into``, which is then backed by what backed it."""
    backing = str(_file(vm, merge.backing)) if merge.backing else _image(vm, merge.disk)
    into = str(_file(vm, merge.into))
    if not (merge.live and _live(vm)):
        img.rebase(into, backing, "qcow2")
        return
    layer = str(_file(vm, merge.layer))
    job = f"corral-merge-{merge.disk}"
    with Monitor(vm.paths.qmp_socket) as mon:
        base_node = mon.node_for_file(backing) if backing else None
        mon.block_stream(job, mon.node_for_file(into), base_node)
        _await_merge(mon, job)
        for driver in ("qcow2", "file"):
            try:
                node = mon.node_for_file(layer, driver)
            except MonitorError:
                continue  # closed by an earlier attempt
            with contextlib.suppress(CorralError):
                mon.blockdev_del(node)


def _await_merge(mon: Monitor, job: str) -> None:
    """Wait for merge job ``job`` to end, asking QEMU between events whether it still runs it.

    QEMU killed mid-merge sends no event: the question fails as soon as its monitor is gone,
    so the delete fails then (data intact, the snapshot and its record untouched), not at
    :data:`MERGE_TIMEOUT` with the VM's lock held all along.

    :raise MonitorError: the job failed, QEMU went away, or the merge outlasted the deadline.
    """
    deadline = time.monotonic() + MERGE_TIMEOUT
    while True:
        try:
            mon.wait_job(job, min(JOB_CHECK, deadline - time.monotonic()))
            return
        except MonitorError as exc:
            ended = exc
        jobs = mon.execute("query-block-jobs")
        if any(j.get("device") == job for j in jobs):
            if time.monotonic() >= deadline:
                raise ended
            continue
        # Gone from QEMU's list: its end event came before this answer and is queued, unless
        # it was a failure, which ``wait_job`` already took and raised.
        try:
            mon.wait_job(job, JOB_CHECK)
        except MonitorError:
            raise ended from None
