"""Disk snapshots as chains of qcow2 files: what creating, reverting to and deleting a
snapshot does to a VM's disks, planned without touching a file.

The copy-on-write promise: a snapshot freezes each writable disk's top file and sends new
writes to a new, empty overlay on it; reverting throws the overlays away and makes new
empty ones on the snapshot's frozen files. So:

* every snapshot owns one frozen file per disk (:attr:`SnapNode.layers`); its backing file
  is the frozen file of the snapshot's parent, or, for a root of the tree, the disk's image
  (or nothing, for a blank disk);
* the VM sits at a position in the tree (:attr:`Chain.current`, ``None`` before any
  snapshot) with one writable top file per disk on that position's frozen files;
* the chain QEMU opens for a disk is its top, then the frozen files from the current
  snapshot up to the root (:func:`disk_chain`).

Deleting a snapshot merges its frozen file into every file that depends on it (the frozen
file of each child, and the VM's top when the VM sits on it): each of them absorbs the
deleted layer's data and is then backed by what backed the deleted layer. With ``k``
successors the layer's data ends up ``k`` times on disk (``k - 1`` copies more than
before). Only the successors are written: never another snapshot's layer, nor the shared
image. Each merge stands alone, so one that stops part-way leaves every file reading as
before and the delete can be run again.

Every plan here is a pure value: the service (:mod:`corral.compute.snapshots`) applies it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from corral.errors import Conflict, InvalidInput, NotFound

#: A snapshot's name within its VM (also what the CLI and the API paths take).
SNAPSHOT_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_SNAPSHOT_NAME = re.compile(SNAPSHOT_NAME_PATTERN)
#: Longest description, in characters.
MAX_DESCRIPTION = 1000
#: What a snapshot holds: ``disk`` (the disks only) or ``memory`` (the disks and, in a file
#: beside them, the guest's RAM and device state taken at the same paused moment).
SnapshotKind = Literal["disk", "memory"]


def check_snapshot_name(name: str, field_name: str = "name") -> None:
    """:raise InvalidInput: ``name`` is not a valid snapshot name (naming ``field_name``)."""
    if not _SNAPSHOT_NAME.match(name):
        raise InvalidInput(
            field_name,
            f"{name!r} is not a snapshot name: 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit",
        )


def check_description(text: str) -> None:
    """:raise InvalidInput: the description is too long or holds a NUL."""
    if len(text) > MAX_DESCRIPTION or "\x00" in text:
        raise InvalidInput("description", f"at most {MAX_DESCRIPTION} characters, no NUL")


@dataclass(frozen=True)
class SnapNode:
    """One snapshot of the tree."""

    id: str
    name: str
    #: The parent snapshot's id; ``None`` for a root.
    parent: str | None
    #: The frozen file of each disk, by disk name (a file name inside the VM's directory).
    layers: Mapping[str, str]
    #: The saved RAM and device state of a ``memory`` snapshot (a file inside the VM's
    #: directory); ``None`` for a disk-only one.
    memory: str | None = None

    @property
    def kind(self) -> SnapshotKind:
        return "disk" if self.memory is None else "memory"


@dataclass(frozen=True)
class Chain:
    """Where a VM is: its position in the tree and each disk's writable top file."""

    #: The snapshot the VM's tops sit on; ``None`` when there is none yet.
    current: str | None
    #: The top file of each disk, by disk name (a file name inside the VM's directory).
    tops: Mapping[str, str]

    @classmethod
    def initial(cls, disks: Sequence[str]) -> Chain:
        """A VM without snapshots: each disk's top is ``<disk>.qcow2``."""
        return cls(None, {disk: f"{disk}.qcow2" for disk in disks})


@dataclass(frozen=True)
class Tree:
    """A VM's snapshots by id."""

    nodes: Mapping[str, SnapNode] = field(default_factory=dict)

    def by_name(self, name: str, vm: str) -> SnapNode:
        """The snapshot called ``name``.

        :raise NotFound: there is none.
        """
        for node in self.nodes.values():
            if node.name == name:
                return node
        raise NotFound("snapshot", f"{vm}/{name}")

    def children(self, snap_id: str | None) -> list[SnapNode]:
        """The snapshots whose parent is ``snap_id``, by name."""
        return sorted((n for n in self.nodes.values() if n.parent == snap_id), key=lambda n: n.name)

    def ancestry(self, snap_id: str | None) -> list[SnapNode]:
        """``snap_id`` and its ancestors, nearest first."""
        found: list[SnapNode] = []
        while snap_id is not None:
            node = self.nodes[snap_id]
            found.append(node)
            snap_id = node.parent
        return found


def disk_chain(tree: Tree, chain: Chain, disk: str) -> list[str]:
    """The files of ``disk`` as QEMU opens them, top first (the image not included)."""
    files = [chain.tops.get(disk, f"{disk}.qcow2")]
    files += [node.layers[disk] for node in tree.ancestry(chain.current) if disk in node.layers]
    return files


def all_chains(tree: Tree, chain: Chain) -> dict[str, list[str]]:
    """:func:`disk_chain` of every disk with a top."""
    return {disk: disk_chain(tree, chain, disk) for disk in chain.tops}


# -- create -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewOverlay:
    """One disk's part of a snapshot: ``frozen`` stops being written, ``overlay`` is new."""

    disk: str
    frozen: str
    overlay: str


@dataclass(frozen=True)
class CreatePlan:
    """What creating a snapshot does."""

    node: SnapNode
    overlays: tuple[NewOverlay, ...]
    #: Where the VM is afterwards.
    chain: Chain


def plan_create(
    tree: Tree, chain: Chain, snap_id: str, name: str, token: str, memory: bool = False
) -> CreatePlan:
    """Freeze every disk's top and put a new overlay named ``<disk>-<token>.qcow2`` on it.

    :param snap_id: the new snapshot's id.
    :param name: its name.
    :param token: a string unique within the VM (new file names carry it).
    :param memory: the guest's state is saved too, into ``memory-<token>.state``.
    :raise InvalidInput: a bad name.
    :raise AlreadyExists: the name is taken.
    """
    from corral.errors import AlreadyExists

    check_snapshot_name(name)
    if any(node.name == name for node in tree.nodes.values()):
        raise AlreadyExists("snapshot", name)
    if not chain.tops:
        raise Conflict("the VM has no writable disk to snapshot")
    overlays = tuple(
        NewOverlay(disk, top, f"{disk}-{token}.qcow2") for disk, top in sorted(chain.tops.items())
    )
    state = f"memory-{token}.state" if memory else None
    node = SnapNode(snap_id, name, chain.current, {o.disk: o.frozen for o in overlays}, state)
    return CreatePlan(node, overlays, Chain(snap_id, {o.disk: o.overlay for o in overlays}))


# -- revert -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevertPlan:
    """What reverting to a snapshot does."""

    target: SnapNode
    #: The VM's top files that are thrown away (what was written since ``since``).
    discarded: tuple[str, ...]
    #: The snapshot the discarded changes were made after (``None``: since the VM was made).
    since: str | None
    #: New empty overlays on the target's frozen files: (disk, overlay, frozen file).
    overlays: tuple[NewOverlay, ...]
    chain: Chain


def plan_revert(tree: Tree, chain: Chain, name: str, vm: str, token: str) -> RevertPlan:
    """Throw the VM's tops away and make new empty ones on snapshot ``name``'s files.

    The tree is left whole: every other snapshot stays, whatever branch it is on.

    :raise NotFound: no such snapshot.
    """
    target = tree.by_name(name, vm)
    overlays = tuple(
        NewOverlay(disk, frozen, f"{disk}-{token}.qcow2")
        for disk, frozen in sorted(target.layers.items())
    )
    since = tree.nodes[chain.current].name if chain.current is not None else None
    return RevertPlan(
        target,
        tuple(chain.tops[d] for d in sorted(chain.tops)),
        since,
        overlays,
        Chain(target.id, {o.disk: o.overlay for o in overlays}),
    )


# -- delete -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Merge:
    """One disk's part of a delete for one successor: ``layer`` is merged into ``into``,
    which is then backed by ``backing`` (``None``: the disk's image, or nothing for a blank
    disk)."""

    disk: str
    layer: str
    into: str
    backing: str | None
    #: Whether ``into`` is in the chain the running VM has open (merged by QEMU, not qemu-img).
    live: bool
    #: What ``into`` belongs to: a child snapshot's name, or :data:`CURRENT_STATE`.
    successor: str = ""


@dataclass(frozen=True)
class DeletePlan:
    """What deleting a snapshot does."""

    target: SnapNode
    #: Merges, one per successor and disk, those off the running chain first; empty when
    #: nothing depends on the snapshot (a leaf the VM is not on): its files are removed.
    merges: tuple[Merge, ...]
    #: The successors that absorb the layer: child snapshots' names, and
    #: :data:`CURRENT_STATE` when the VM sits on the snapshot.
    absorbed_by: tuple[str, ...]
    #: The frozen files removed at the end.
    removed: tuple[str, ...]
    #: The tree and position afterwards.
    tree: Tree
    chain: Chain


#: How a delete preview names the VM's own (unsaved) state.
CURRENT_STATE = "the VM's current state"


def plan_delete(tree: Tree, chain: Chain, name: str, vm: str) -> DeletePlan:
    """Delete snapshot ``name``: merge its frozen files into every file built on them (the
    frozen file of each child, and the VM's top when the VM sits on the snapshot).

    Each successor absorbs the layer on its own and is then backed by the layer's parent
    (or the image), so the merges are independent: each one alone leaves a consistent
    state, whichever have run. A successor that has absorbed the layer holds a copy of
    every cluster it used to read through it, so it reads the same whether the layer is
    still below it or not. The recorded tree and chain, which still name the layer until
    the delete completes, therefore stay true after a merge that stopped part-way: a VM
    started from them opens the layer below a successor that no longer needs it, and sees
    the same data; the same delete run again re-does the merges (a done one is a no-op).

    :raise NotFound: no such snapshot.
    """
    target = tree.by_name(name, vm)
    children = tree.children(target.id)
    live_ids = {n.id for n in tree.ancestry(chain.current)}
    successors: list[tuple[str, Mapping[str, str], bool]] = [
        (c.name, c.layers, c.id in live_ids) for c in children
    ]
    if chain.current == target.id:
        successors.append((CURRENT_STATE, chain.tops, True))
    merges: list[Merge] = []
    for successor, files, live in successors:
        for disk, layer in sorted(target.layers.items()):
            into = files.get(disk)
            if into is None:
                continue
            parent_layer = None
            if target.parent is not None:
                parent_layer = tree.nodes[target.parent].layers.get(disk)
            merges.append(Merge(disk, layer, into, parent_layer, live, successor))
    merges.sort(key=lambda m: (m.live, m.successor, m.disk))
    nodes = {k: v for k, v in tree.nodes.items() if k != target.id}
    for child in children:
        nodes[child.id] = replace(child, parent=target.parent)
    new_chain = replace(chain, current=target.parent) if chain.current == target.id else chain
    return DeletePlan(
        target,
        tuple(merges),
        tuple(s[0] for s in successors),
        (*sorted(target.layers.values()), *([target.memory] if target.memory else [])),
        Tree(nodes),
        new_chain,
    )


def describe_delete(plan: DeletePlan, vm: str, running: bool) -> list[str]:
    """What a delete will do, one line per step, for a preview.

    :param running: whether QEMU has the VM's chain open (then it merges what is in it).
    """
    name = plan.target.name
    if not plan.merges:
        return [f"snapshot {name!r} has nothing built on it: its files are removed"] + [
            f"remove {f}" for f in plan.removed
        ]
    into = " and ".join(plan.absorbed_by)
    lines = [f"snapshot {name!r} is merged into {into} of vm {vm!r}"]
    for merge in plan.merges:
        below = merge.backing or "the disk's image"
        how = "by QEMU while the VM runs" if merge.live and running else "with qemu-img"
        lines.append(
            f"{merge.disk}: copy {merge.layer} into {merge.into} ({how}); "
            f"{merge.into} is then backed by {below}"
        )
    count = len(plan.absorbed_by)
    if count > 1:
        lines.append(
            f"its data is copied into each of the {count} layers built on it: disk use grows "
            f"by up to {count - 1} copies of snapshot {name!r}'s layer"
        )
    lines.append("nothing is lost: every other snapshot and the VM's state read as before")
    lines += [f"remove {f}" for f in plan.removed]
    return lines


def describe_revert(
    plan: RevertPlan, vm: str, unsaved: bool, running: bool = False, resume: str = ""
) -> list[str]:
    """What a revert will do, and what it loses, for a preview.

    :param unsaved: whether the VM's tops hold data written since its last snapshot.
    :param running: whether QEMU runs the VM now (a memory snapshot's revert destroys it).
    :param resume: for a memory snapshot, the state the guest was in when it was taken
        (``running`` or ``paused``), which it is put back in.
    """
    since = f"snapshot {plan.since!r}" if plan.since else "the VM was made"
    lines = []
    if plan.target.memory is not None and running:
        lines.append(f"vm {vm!r} runs: it is destroyed first (LOST: its memory as it is now)")
    if unsaved:
        lines.append(f"LOST: what vm {vm!r} wrote since {since} ({', '.join(plan.discarded)})")
    else:
        lines.append(f"nothing is lost: vm {vm!r} wrote nothing since {since}")
    lines.append(f"vm {vm!r} goes back to snapshot {plan.target.name!r}")
    if plan.target.memory is not None:
        lines.append(
            f"QEMU loads the saved memory and device state ({plan.target.memory}): the guest "
            f"is {resume or 'running'} again where it was, its processes with it"
        )
    lines.append("every snapshot stays in the tree")
    return lines
