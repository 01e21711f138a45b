"""A VM's snapshots as its records hold them: the tree of snapshot rows, where the VM sits
in it and which files each disk's chain has. What taking, reverting and deleting snapshots
(:mod:`corral.compute.snapshots`, :mod:`corral.compute.snapshot_merge`) read and record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.records import Vm
from corral.compute.state import Op, VmState, require
from corral.storage.snapshots import Chain, SnapNode, Tree, all_chains
from corral.store.models import SnapshotRow


@dataclass(frozen=True)
class Preview:
    """What an operation will do, in lines for a person."""

    lines: list[str]


def snapshot_rows(session: Session, vm: Vm) -> list[SnapshotRow]:
    """VM ``vm``'s snapshot rows, oldest first."""
    query = select(SnapshotRow).where(SnapshotRow.vm_id == vm.row.id)
    return list(session.scalars(query.order_by(SnapshotRow.created_at, SnapshotRow.name)))


def tree_of(rows: list[SnapshotRow]) -> Tree:
    """The tree the rows make."""
    return Tree(
        {
            r.id: SnapNode(r.id, r.name, r.parent_id, json.loads(r.layers), r.memory_file)
            for r in rows
        }
    )


def chain_of(vm: Vm) -> Chain:
    """Where the VM's disks are: from the record, or ``<disk>.qcow2`` for each writable disk."""
    if vm.row.disk_chain:
        saved = json.loads(vm.row.disk_chain)
        return Chain(saved["current"], {d: files[0] for d, files in saved["disks"].items()})
    return Chain.initial([d.name for d in vm.spec.disks if not d.readonly])


def record_chain(vm: Vm, tree: Tree, chain: Chain) -> None:
    """Record where the VM is and the files QEMU opens for each disk, top first (the
    caller's session commits it)."""
    data = {"current": chain.current, "disks": all_chains(tree, chain)}
    if vm.row.disk_chain and "base" in (saved := json.loads(vm.row.disk_chain)):
        data["base"] = saved["base"]  # a linked clone's: files of another VM below its own
    vm.row.disk_chain = json.dumps(data, sort_keys=True)


def vm_file(vm: Vm, name: str) -> Path:
    """The file ``name`` in the VM's directory."""
    return Path(vm.paths.root) / name


def image_below(vm: Vm, disk: str) -> str | None:
    """The file below a disk's own chain: its image (a linked clone: the source's layer)."""
    for layer in vm.paths.disks[disk].backing:
        if not layer.path.startswith(vm.paths.root + "/"):
            return layer.path
    return None


def prepare(ctx: Corral, name: str, op: Op) -> None:
    """Reconcile VM ``name`` and check ``op`` may run in its state (caller holds the lock)."""
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        records.reconcile(vm)
        require(name, op, vm.state)


def runs(vm: Vm) -> bool:
    """Whether QEMU has the VM's disks open (running or paused)."""
    return vm.state in (VmState.RUNNING, VmState.PAUSED)
