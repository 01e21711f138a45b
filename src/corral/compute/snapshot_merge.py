"""Deleting a snapshot, running or stopped: its frozen layer is merged into every file built
on it, then its record and files go.

The plan comes from :func:`corral.storage.snapshots.plan_delete` (pure); this module applies
it under the VM's lock, one merge per successor and disk:

* a successor QEMU has open in the running VM's chain (the VM's top, or a frozen layer
  between the top and the deleted one) is merged by QEMU: ``block-stream`` into that node
  with the deleted layer's parent as base, after which QEMU backs it by that parent and
  the deleted layer's nodes are closed;
* any other successor (a frozen file on another branch, or any file of a stopped VM) by a
  safe ``qemu-img rebase`` onto the deleted layer's parent, which copies in what differs.

Only the successors are written: never another snapshot's layer, never the shared image;
a successor a linked clone reads refuses the delete before anything changes. Each merge
stands alone (see :func:`~corral.storage.snapshots.plan_delete`): if one fails, the ones
done read the same with or without the layer, the records still name it, and the same
delete run again completes. Only when every merge is done do the rows change and the
files go.
"""

from __future__ import annotations

import contextlib

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import Progress, holding, quiet
from corral.compute.records import Vm
from corral.compute.snapshot_state import (
    Preview,
    chain_of,
    image_below,
    prepare,
    record_chain,
    runs,
    snapshot_rows,
    tree_of,
    vm_file,
)
from corral.compute.state import Op
from corral.errors import CorralError, MonitorError
from corral.qemu import img
from corral.qemu.monitor import Monitor
from corral.storage.snapshots import DeletePlan, Merge, describe_delete, plan_delete

#: Seconds a merge by QEMU may take before the delete fails (the data stays intact).
MERGE_TIMEOUT = 3600.0


def _delete_plan(ctx: Corral, name: str, snap: str) -> tuple[DeletePlan, bool]:
    """The plan, and whether the VM runs.

    :raise InUse: a linked clone reads a file the delete removes or writes.
    """
    from corral.compute.clone import check_no_linked_clones

    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        plan = plan_delete(tree_of(snapshot_rows(session, vm)), chain_of(vm), snap, name)
        touched = [*plan.removed, *(m.into for m in plan.merges)]
        files = [str(vm_file(vm, f)) for f in touched]
        check_no_linked_clones(session, "snapshot", f"{name}/{snap}", files)
        return plan, runs(vm)


def preview_delete(ctx: Corral, name: str, snap: str) -> Preview:
    """What deleting snapshot ``snap`` merges into what; nothing changes.

    :raise NotFound: no such VM or snapshot.
    :raise InUse: a linked clone reads a file the delete removes or writes.
    """
    plan, running = _delete_plan(ctx, name, snap)
    return Preview(describe_delete(plan, name, running))


def delete_snapshot(ctx: Corral, name: str, snap: str, progress: Progress = quiet) -> Preview:
    """Delete snapshot ``snap`` of VM ``name`` (running or not), merging its layer into
    every layer built on it (its children's, and the VM's own when it sits on it).

    :raise NotFound: no such snapshot.
    :raise InUse: a linked clone reads a file the delete removes or writes.
    :raise StateError: the VM is starting or stopping.
    :raise MonitorError: QEMU's merge failed (data intact; the delete can be run again).
    :raise ToolError: qemu-img's merge failed (likewise).
    """
    with holding(ctx, name, progress):
        prepare(ctx, name, Op.SNAPSHOT_DELETE)
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
            rows = {r.id: r for r in snapshot_rows(session, vm)}
            for node_id, node in plan.tree.nodes.items():
                rows[node_id].parent_id = node.parent
            session.flush()
            session.delete(rows[plan.target.id])
            record_chain(vm, plan.tree, plan.chain)
        progress(90, "removing the merged files")
        for file in plan.removed:
            vm_file(vm, file).unlink(missing_ok=True)
        progress(95, f"snapshot {snap} deleted")
        return Preview(said)


def _merge(vm: Vm, merge: Merge) -> None:
    """Copy ``merge.layer`` into ``merge.into``, which is then backed by what backed it.

    :raise MonitorError: QEMU's stream failed, or QEMU went away during it.
    :raise ToolError: qemu-img's rebase failed.
    """
    backing = str(vm_file(vm, merge.backing)) if merge.backing else image_below(vm, merge.disk)
    into = str(vm_file(vm, merge.into))
    if not (merge.live and runs(vm)):
        img.rebase(into, backing, "qcow2")
        return
    layer = str(vm_file(vm, merge.layer))
    job = f"corral-merge-{merge.disk}"
    with Monitor(vm.paths.qmp_socket) as mon:
        base_node = mon.node_for_file(backing) if backing else None
        mon.block_stream(job, mon.node_for_file(into), base_node)
        # A QEMU killed mid-merge closes the monitor: the wait fails then, not at the
        # deadline, with the snapshot and its record untouched.
        mon.wait_job(job, MERGE_TIMEOUT)
        for driver in ("qcow2", "file"):
            try:
                node = mon.node_for_file(layer, driver)
            except MonitorError:
                continue  # closed by an earlier attempt
            with contextlib.suppress(CorralError):
                mon.blockdev_del(node)
