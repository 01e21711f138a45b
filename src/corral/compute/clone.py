"""Cloning a VM: a new VM whose disks start as the source's disks are, or were at a snapshot.

Two modes:

* **linked**: each of the clone's disks is a new, empty qcow2 overlay on a frozen layer of
  the source (``qemu-img create -f qcow2 -b <layer> -F qcow2``: instant). A frozen layer is
  a snapshot's: cloning from snapshot ``S`` uses ``S``'s layers; cloning the source's
  current state first takes a snapshot named ``clone-<name>`` of the (stopped) source, the
  way ``corral snapshot create`` does, so the source goes on writing to a new overlay and
  never into a file the clone reads. The files the clone reads below its own are recorded
  as its *base* (``disk_chain``'s ``base``: absolute names, top first, the image not
  included); while any VM's base names a file of a VM or snapshot, deleting that VM or
  snapshot is refused (409 naming the clone).
* **full**: each disk is copied whole, the source's chain and its image flattened into one
  standalone qcow2 (``qemu-img convert -f qcow2 -O qcow2``, progress on the task): the clone
  depends on nothing, not even the catalogue image.

The current state of a running source is frozen by that snapshot too, live (one QMP
transaction over all its disks), for a full clone as well (its layer is merged back once the
copy is made): the clone's disks are as after a power cut at that instant, which journaling
file systems recover from, as from any crash-consistent snapshot. A snapshot's layers are
frozen, so a snapshot is cloned whatever the source's state.

The clone gets its own name, UUID (and so MAC addresses: explicit MACs are dropped), a new
cloud-init instance id and seed when the source has one, and a newly reserved SSH forward
(the other port forwards are dropped: they would collide with the source's). A source whose
VNC display asks for a password passes its ``vnc-password`` file (mode 0600) on to the
clone, which could not start without it. Its quota is
checked atomically with its insert (:func:`corral.access.quotas.reserving`). On failure its
directory goes, and so does a ``clone-<name>`` snapshot taken for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import Progress, holding, quiet
from corral.compute.state import Op, require
from corral.errors import AlreadyExists, Conflict, InUse, InvalidInput, NotFound
from corral.qemu.paths import VmPaths
from corral.spec import parse
from corral.spec.vm import VmSpec
from corral.storage.snapshots import SnapNode, Tree
from corral.store.models import ImageRow, SnapshotRow, VmRow

CloneMode = Literal["linked", "full"]
#: Guest port whose forward is re-allocated for the clone.
SSH_PORT = 22


@dataclass(frozen=True)
class CloneRequest:
    """What ``corral clone`` asks for."""

    source: str
    name: str
    mode: CloneMode = "linked"
    #: Clone this snapshot of the source; ``None``: its disks as they are now.
    snapshot: str | None = None
    #: The clone's project by name; ``None``: the source's.
    project: str | None = None


@dataclass(frozen=True)
class DiskPlan:
    """One disk of the clone."""

    disk: str
    #: The source's files the clone's disk is made from, top first, absolute (the image
    #: not included).
    chain: tuple[str, ...]
    #: Whether the source writes to this disk (readonly disks have no snapshot layer).
    writable: bool


@dataclass(frozen=True)
class ClonePlan:
    """What a clone makes (pure)."""

    spec: VmSpec
    mode: CloneMode
    disks: tuple[DiskPlan, ...]

    def disk_chain(self) -> str:
        """The clone's ``disk_chain`` record: its own files, and for a linked clone its base."""
        data: dict[str, Any] = {
            "current": None,
            "disks": {d.disk: [f"{d.disk}.qcow2"] for d in self.disks if d.writable},
        }
        if self.mode == "linked":
            data["base"] = {d.disk: list(d.chain) for d in self.disks}
        return json.dumps(data, sort_keys=True)


def auto_snapshot_name(name: str) -> str:
    """The snapshot a linked clone of a source's current state is made on."""
    return f"clone-{name}"[:63]


# -- pure -------------------------------------------------------------------------------------


def clone_spec(
    source: VmSpec,
    name: str,
    mode: CloneMode,
    ssh_port: int | None,
    sizes: Mapping[str, int],
) -> VmSpec:
    """The clone's spec: ``source``'s with a new name and UUID, MACs derived from the UUID,
    only the SSH forward kept (on ``ssh_port``); a full clone's disks stand alone.

    :param sizes: each disk's virtual size by name (a full clone records it as its size).
    :raise InvalidInput: the name is not a VM name.
    """
    data = source.model_dump(mode="json")
    data["name"] = name
    data["uuid"] = str(uuid.uuid4())
    for nic in data["nics"]:
        nic["mac"] = None
        nic["ip"] = None  # a network NIC gets a port of its own: new MAC, new address
        kept = [
            f
            for f in nic["forwards"]
            if f["protocol"] == "tcp" and f["guest_port"] == SSH_PORT and ssh_port is not None
        ]
        nic["forwards"] = [{**f, "host_port": ssh_port} for f in kept[:1]]
    if mode == "full":
        for disk in data["disks"]:
            disk["image"] = None
            disk["size"] = sizes[disk["name"]]
    return parse(VmSpec, data)


def snapshot_chains(
    tree: Tree,
    snap: SnapNode,
    current: Mapping[str, Sequence[str]],
    base: Mapping[str, Sequence[str]],
) -> dict[str, list[str]]:
    """Each disk's files at snapshot ``snap``, top first, relative to the source's directory
    (its own layers) or absolute (its base); a disk the snapshot has no layer of (readonly)
    is taken as it is now (``current``)."""
    out: dict[str, list[str]] = {}
    for disk, files in current.items():
        if disk not in snap.layers:
            out[disk] = list(files)
            continue
        layers = [n.layers[disk] for n in tree.ancestry(snap.id) if disk in n.layers]
        out[disk] = layers + list(base.get(disk, ()))
    return out


def base_files(disk_chain: str | None) -> set[str]:
    """Every file a VM's base names (what it reads of other VMs)."""
    if not disk_chain:
        return set()
    base: dict[str, list[str]] = json.loads(disk_chain).get("base", {})
    return {file for files in base.values() for file in files}


# -- dependants -------------------------------------------------------------------------------


def linked_clones_of(session: Session, files: Iterable[str], under: str | None = None) -> list[str]:
    """Names of the VMs whose base reads one of ``files`` or a file under directory
    ``under``."""
    wanted = set(files)
    prefix = under.rstrip("/") + "/" if under else None
    found: list[str] = []
    query = select(VmRow.name, VmRow.disk_chain).where(VmRow.disk_chain.is_not(None))
    for name, raw in session.execute(query.order_by(VmRow.name)):
        used = base_files(raw)
        if used & wanted or (prefix and any(f.startswith(prefix) for f in used)):
            found.append(name)
    return found


def check_no_linked_clones(
    session: Session, kind: str, name: str, files: Iterable[str] = (), under: str | None = None
) -> None:
    """:raise InUse: a linked clone reads ``files`` or files under ``under`` (naming it)."""
    clones = linked_clones_of(session, files, under)
    if clones:
        raise InUse(kind, name, [f"linked clone vm {c!r}" for c in clones])


# -- service ----------------------------------------------------------------------------------


def check_clone(ctx: Corral, req: CloneRequest) -> None:
    """What is known before the clone is queued: names, the snapshot, a name taken.

    :raise InvalidInput: a bad name or mode.
    :raise NotFound: no such source or snapshot.
    :raise AlreadyExists: the clone's name is taken (or, for a linked clone of the current
        state, the snapshot it would take).
    """
    from corral.compute.define import check_name
    from corral.storage.snapshots import check_snapshot_name

    check_name(req.name)
    if req.mode not in ("linked", "full"):
        raise InvalidInput("mode", f"{req.mode!r} is neither 'linked' nor 'full'")
    if req.snapshot is not None:
        check_snapshot_name(req.snapshot, "snapshot")
    with ctx.db.session() as session:
        vm = records.load(ctx, session, req.source)
        if session.scalars(select(VmRow.id).where(VmRow.name == req.name)).first():
            raise AlreadyExists("vm", req.name)
        snaps = {
            r.name
            for r in session.scalars(select(SnapshotRow).where(SnapshotRow.vm_id == vm.row.id))
        }
    if req.snapshot is not None and req.snapshot not in snaps:
        raise NotFound("snapshot", f"{req.source}/{req.snapshot}")
    if req.snapshot is None and req.mode == "linked" and auto_snapshot_name(req.name) in snaps:
        raise AlreadyExists("snapshot", f"{req.source}/{auto_snapshot_name(req.name)}")


def clone(ctx: Corral, req: CloneRequest, progress: Progress = quiet) -> VmSpec:
    """Make VM ``req.name`` from ``req.source`` (see the module's docstring).

    :raise InvalidInput: a bad name.
    :raise NotFound: no such source, snapshot or project.
    :raise AlreadyExists: the name is taken.
    :raise StateError: the source is not stopped and no snapshot was named.
    :raise QuotaExceeded: the clone would take its project past a quota (naming it).
    :raise ToolError: qemu-img failed (nothing is left of the clone).
    """
    from corral.compute.snapshots import create_snapshot, delete_snapshot

    check_clone(ctx, req)
    snapshot, auto = req.snapshot, None
    if snapshot is None and (req.mode == "linked" or _runs(ctx, req.source)):
        progress(5, f"freezing vm {req.source}'s disks")
        auto = auto_snapshot_name(req.name)
        create_snapshot(ctx, req.source, auto, f"frozen for the {req.mode} clone {req.name}")
        snapshot = auto
    try:
        spec = _clone_locked(ctx, req, snapshot, progress)
    except BaseException:
        if auto is not None:
            with contextlib.suppress(Exception):
                delete_snapshot(ctx, req.source, auto)
        raise
    if auto is not None and req.mode == "full":
        # The copy depends on nothing: the layer frozen for it merges back into the source.
        progress(95, f"merging the frozen layer back into vm {req.source}")
        delete_snapshot(ctx, req.source, auto)
    return spec


def _runs(ctx: Corral, name: str) -> bool:
    """Whether VM ``name``'s QEMU runs (its disks change under a copy)."""
    from corral.compute.state import VmState

    with ctx.db.session() as session:
        state = records.reconcile(records.load(ctx, session, name))
    return state in (VmState.RUNNING, VmState.PAUSED, VmState.STARTING, VmState.STOPPING)


def _require_stopped(ctx: Corral, name: str) -> None:
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        require(name, Op.CLONE, records.reconcile(vm))


def _clone_locked(
    ctx: Corral, req: CloneRequest, snapshot: str | None, progress: Progress
) -> VmSpec:
    from corral.compute.lifecycle import vm_lock

    with holding(ctx, req.source, progress), vm_lock(ctx, req.name):
        if snapshot is None:
            _require_stopped(ctx, req.source)
        progress(10, "planning")
        with ctx.db.session() as session:
            source = records.load(ctx, session, req.source)
            if session.scalars(select(VmRow.id).where(VmRow.name == req.name)).first():
                raise AlreadyExists("vm", req.name)
            project_id = _project_id(session, source.row, req.project)
            chains = _source_chains(session, source, snapshot)
            row = source.row
            fields = {
                "image": row.image,
                "ready_marker": row.ready_marker,
                "instance_type": row.instance_type,
                "keypair": row.keypair,
                "ssh_user": row.ssh_user,
            }
            instance_id = f"i-{uuid.uuid4().hex[:16]}" if row.instance_id else None
            public_key = _public_key(session, row)
            sizes = _sizes(session, source.spec)
        return _make(
            ctx, req, source, chains, project_id, fields, instance_id, public_key, sizes, progress
        )


def _project_id(session: Session, source: VmRow, project: str | None) -> str:
    from corral.compute.ownership import resolve_project

    if project is None:
        return source.project_id
    return resolve_project(session, project).id


def _source_chains(session: Session, source: records.Vm, snapshot: str | None) -> list[DiskPlan]:
    root = Path(source.paths.root)
    current: dict[str, list[str]] = {}
    for disk in source.spec.disks:
        files = source.paths.disks[disk.name]
        layers = [files.top.path, *(layer.path for layer in files.backing)]
        current[disk.name] = layers[:-1] if disk.image is not None else layers
    if snapshot is not None:
        rows = session.scalars(select(SnapshotRow).where(SnapshotRow.vm_id == source.row.id))
        tree = Tree({r.id: SnapNode(r.id, r.name, r.parent_id, json.loads(r.layers)) for r in rows})
        snap = tree.by_name(snapshot, source.name)
        base = json.loads(source.row.disk_chain).get("base", {}) if source.row.disk_chain else {}
        current = snapshot_chains(tree, snap, current, base)
    return [
        DiskPlan(d.name, tuple(str(root / f) for f in current[d.name]), not d.readonly)
        for d in source.spec.disks
    ]


def _public_key(session: Session, row: VmRow) -> str | None:
    from corral.store.models import KeyPairRow

    if row.keypair is None:
        return None
    key = session.scalars(select(KeyPairRow).where(KeyPairRow.name == row.keypair)).first()
    return None if key is None else key.public_key


def _sizes(session: Session, spec: VmSpec) -> dict[str, int]:
    images = {d.image for d in spec.disks if d.image and d.size is None}
    found = dict(
        session.execute(
            select(ImageRow.name, ImageRow.virtual_size).where(ImageRow.name.in_(images))
        ).all()
    )
    out: dict[str, int] = {}
    for d in spec.disks:
        out[d.name] = d.size if d.size is not None else int(found.get(d.image or "", 0))
    return out


def _make(
    ctx: Corral,
    req: CloneRequest,
    source: records.Vm,
    disks: list[DiskPlan],
    project_id: str,
    fields: dict[str, str | None],
    instance_id: str | None,
    public_key: str | None,
    sizes: dict[str, int],
    progress: Progress,
) -> VmSpec:
    from corral.access.quotas import check_project_quota, demand_of, image_sizes, reserving
    from corral.compute.network_host import sync_host
    from corral.compute.ports import bindable, pick_port, ports_lock, reserved_by_records
    from corral.compute.settings import load_settings
    from corral.compute.vm_ports import allocate_vm_ports, host_change

    has_ssh = any(
        f.protocol == "tcp" and f.guest_port == SSH_PORT
        for n in source.spec.nics
        for f in n.forwards
    )
    with ports_lock(ctx):
        port = None
        if has_ssh:
            low, high = load_settings(ctx.home).launch.ssh_port_range
            port = pick_port(reserved_by_records(ctx), low, high, bindable("127.0.0.1"))
        spec = clone_spec(source.spec, req.name, req.mode, port, sizes)
        plan = ClonePlan(spec, req.mode, tuple(disks))
        with ctx.db.session() as session:
            images = image_sizes(session, (d.image for d in spec.disks if d.image))
        demand = demand_of(spec, images)
        check_project_quota(ctx, project_id, demand)
        root = ctx.home.vm_dir(req.name)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700, parents=True)
        try:
            _make_disks(plan, root, progress)
            if spec.seed:
                progress(90, "writing the cloud-init seed")
            if spec.vnc is not None and spec.vnc.password:
                _copy_vnc_password(
                    Path(source.paths.vnc_password), Path(VmPaths.for_dir(str(root)).vnc_password)
                )
            with host_change(ctx, spec) as networked, reserving(ctx, project_id, demand) as session:
                row = VmRow(
                    id=str(spec.uuid),
                    name=spec.name,
                    project_id=project_id,
                    spec=spec.model_dump_json(),
                    state="defined",
                    reason=f"cloned from {req.source}",
                    disk_chain=plan.disk_chain(),
                    instance_id=instance_id,
                    **fields,
                )
                session.add(row)
                if networked:  # new ports on the same networks: the seed has their MACs
                    spec = allocate_vm_ports(session, row, spec)
                    sync_host(ctx, session)
                if spec.seed:
                    seed = root / "seed.iso"
                    _write_seed(
                        source, spec, seed, instance_id or f"i-{uuid.uuid4().hex[:16]}", public_key
                    )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    progress(95, f"vm {req.name} cloned from {req.source}")
    return spec


def _copy_vnc_password(source: Path, target: Path) -> None:
    """Give the clone the source's VNC password: its display asks for one, and QEMU reads it
    from the clone's own ``vnc-password`` (mode 0600) at start.

    :raise Conflict: the source has password auth but no password file (it could not start
        either; set its password first).
    """
    try:
        secret = source.read_bytes()
    except FileNotFoundError:
        raise Conflict(
            f"the source's VNC display asks for a password but {source} is missing: "
            "set its password (corral vnc password) first"
        ) from None
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secret)


def _make_disks(plan: ClonePlan, root: Path, progress: Progress) -> None:
    from corral.qemu import img

    for index, disk in enumerate(plan.disks):
        target = root / f"{disk.disk}.qcow2"
        if plan.mode == "linked":
            progress(20 + 60 * index // len(plan.disks), f"{disk.disk}: overlay on {disk.chain[0]}")
            img.create_overlay(target, Path(disk.chain[0]), "qcow2")
            continue
        start, share = 15 + 75 * index // len(plan.disks), 75 // len(plan.disks)
        label = f"{disk.disk}: copying {disk.chain[0]}"
        progress(start, label)
        partial = root / f".{disk.disk}.qcow2.part"

        def report(done: float, start: int = start, share: int = share, label: str = label) -> None:
            progress(start + int(share * done), label)

        img.convert(disk.chain[0], "qcow2", partial, "qcow2", report)
        partial.rename(target)


def _write_seed(
    source: records.Vm, spec: VmSpec, seed: Path, instance_id: str, public_key: str | None
) -> None:
    """A new NoCloud seed: the source's user-data with the clone's identity and MACs."""
    from corral.cloudinit.render import SeedRequest, render_seed
    from corral.cloudinit.seed import write_seed

    user_data = _seed_user_data(Path(source.paths.root) / "seed.iso")
    files = render_seed(
        SeedRequest(
            instance_id=instance_id,
            hostname=spec.name,
            authorized_keys=(public_key,) if public_key else (),
            nics=tuple((nic.name, spec.nic_mac(i)) for i, nic in enumerate(spec.nics)),
        )
    )
    if user_data is not None:
        files["user-data"] = user_data
    write_seed(seed, files)


def _seed_user_data(path: Path) -> bytes | None:
    """The ``user-data`` of a seed ISO, as it was written; ``None`` without one."""
    import io

    import pycdlib

    if not path.exists():
        return None
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/user-data")
        return out.getvalue()
    except pycdlib.pycdlibexception.PyCdlibException:
        return None
    finally:
        iso.close()
