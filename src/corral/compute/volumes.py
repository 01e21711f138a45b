"""Volumes: disks that belong to a project rather than to a VM (vSphere's virtual disks on a
datastore, OpenStack's volumes).

A volume is a row (:class:`~corral.store.models.VolumeRow`) and a file in the pool
(:mod:`corral.storage.volumes`), and the two exist together or not at all:

* a create checks what it can first (name, size, format, the caller's role in the project,
  the name free, the quota, the datastore's capacity), then writes the file, then the row,
  in one transaction with the quota check under the project's lock
  (:func:`~corral.access.quotas.reserve`) and the audit entry. The row is committed last;
  a failure after the file was written, the commit's included, removes the file;
* a delete removes the row, in a statement that also requires it detached, then the file.

Names are unique within a project, so the same name may be in several of a caller's
projects: a lookup without a project finds the one the caller sees, and asks for the
project when there are several. A volume of a project the caller is not in answers
:class:`~corral.errors.NotFound`, as one that does not exist.

The listing also shows the VMs' disks, read-only, as kind ``vm-disk`` named
``<vm>/<disk>`` (as vSphere's datastore browser shows each VM's disks in its folder): they
take space on the same datastore and count against the same disk quota, but they live and
die with their VM and are read and changed through it; no by-name lookup finds one.

Every create, update and delete, allowed or refused, is in the audit log.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, authorize
from corral.access.projects import find_project
from corral.access.quotas import Demand, check_project_quota, reserve
from corral.access.scope import visible
from corral.compute.context import Corral
from corral.errors import AlreadyExists, CorralError, InUse, InvalidInput, NotFound
from corral.spec.vm import NAME_PATTERN
from corral.storage.volumes import (
    VolumeFormat,
    check_volume_format,
    parse_volume_size,
    volume_path,
)
from corral.store.models import DEFAULT_PROJECT, ProjectRow, VmRow, VolumeRow, as_utc

#: What a listing holds: volumes, and the VMs' own disks (read-only).
Kind = Literal["volume", "vm-disk"]
#: Longest description, in characters.
MAX_DESCRIPTION = 1000


@dataclass(frozen=True)
class VolumeView:
    """A volume, or a VM's disk, as the listing and ``info`` show it."""

    #: The volume's name; a VM's disk is ``<vm>/<disk>``.
    name: str
    #: The name of its project.
    project: str
    kind: Kind
    format: VolumeFormat
    #: Provisioned (virtual) size in bytes: what a guest sees.
    size: int
    #: Bytes allocated on the host (``st_blocks``); 0 when the file cannot be read.
    used: int
    #: The VM's name, if it is attached to one (a VM's disk always is, to its VM).
    attached_to: str | None
    description: str
    #: The image a VM's disk is a linked clone of; ``None`` for volumes and blank disks.
    image: str | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VolumeFilter:
    """Which objects a listing shows; ``None`` matches everything."""

    #: Only this project's (by name).
    project: str | None = None
    #: Only names that contain this.
    name: str | None = None
    #: Only attached (``True``) or detached (``False``) ones; a VM's disk is attached.
    attached: bool | None = None
    kind: Kind | None = None


# -- pure rules -----------------------------------------------------------------------------


def check_name(name: str, field: str = "name") -> None:
    """:raise InvalidInput: ``name`` is not a valid volume name."""
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput(
            field,
            f"{name!r} is not allowed: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter or digit",
        )


def check_description(text: str) -> None:
    """:raise InvalidInput: ``text`` is longer than :data:`MAX_DESCRIPTION` or not one line."""
    if len(text) > MAX_DESCRIPTION or "\n" in text or "\x00" in text:
        raise InvalidInput(
            "description", f"must be one line of at most {MAX_DESCRIPTION} characters"
        )


# -- lookups --------------------------------------------------------------------------------


def find_volume(
    session: Session,
    principal: Principal,
    name: str,
    project: str | None = None,
    action: Action = Action.READ,
) -> VolumeRow:
    """The volume ``name``, if ``principal`` may take ``action`` on it.

    :param project: its project's name; ``None``: whichever of the projects ``principal``
        sees holds the name.
    :raise NotFound: no such volume (or project), or not in a project ``principal`` sees.
    :raise InvalidInput: no project given and the name is in several that ``principal``
        sees (field ``project``, naming them).
    :raise Forbidden: ``principal`` sees it but may not take ``action``.
    """
    if not re.match(NAME_PATTERN, name):  # no such name can exist; keep it off SQL
        raise NotFound("volume", name)
    query = select(VolumeRow).where(VolumeRow.name == name)
    if project is not None:
        query = query.where(VolumeRow.project_id == find_project(session, principal, project).id)
    else:
        query = query.where(visible(principal, VolumeRow.project_id))
    rows = list(session.scalars(query.limit(20)))
    if not rows:
        raise NotFound("volume", name)
    if len(rows) > 1:
        names = sorted(_project_name(session, row.project_id) for row in rows)
        raise InvalidInput(
            "project",
            f"volume {name!r} is in projects {', '.join(names)}; name the project",
        )
    row = rows[0]
    authorize(principal, action, "volume", name, row.project_id)
    return row


def _project_name(session: Session, project_id: str) -> str:
    row = session.get(ProjectRow, project_id)
    return project_id if row is None else row.name


def _attached_name(session: Session, vm_id: str | None) -> str | None:
    if vm_id is None:
        return None
    name = session.scalars(select(VmRow.name).where(VmRow.id == vm_id)).first()
    return vm_id if name is None else name


def _file(ctx: Corral, row: VolumeRow) -> Path:
    return volume_path(ctx.home.root, row.id, check_volume_format(row.format))


def _used(path: Path, fmt: VolumeFormat) -> int:
    from corral.storage.volumes import volume_usage

    try:
        return volume_usage(path, fmt).used
    except CorralError:
        return 0


def _view(ctx: Corral, row: VolumeRow, project: str, attached_to: str | None) -> VolumeView:
    fmt = check_volume_format(row.format)
    return VolumeView(
        name=row.name,
        project=project,
        kind="volume",
        format=fmt,
        size=row.size,
        used=_used(_file(ctx, row), fmt),
        attached_to=attached_to,
        description=row.description,
        image=None,
        created_at=as_utc(row.created_at).isoformat(),
    )


def _view_of(ctx: Corral, session: Session, row: VolumeRow) -> VolumeView:
    return _view(
        ctx,
        row,
        _project_name(session, row.project_id),
        _attached_name(session, row.attached_to),
    )


def get_volume(
    ctx: Corral, principal: Principal, name: str, project: str | None = None
) -> VolumeView:
    """One volume (see :func:`find_volume` for ``project`` and the errors)."""
    with ctx.db.session() as session:
        return _view_of(ctx, session, find_volume(session, principal, name, project))


# -- changes --------------------------------------------------------------------------------


def create_volume(
    ctx: Corral,
    actor: Principal,
    name: str,
    size: str | int,
    fmt: str = "qcow2",
    project: str | None = None,
    description: str = "",
) -> VolumeView:
    """Create a blank volume in ``project`` (``default`` when ``None``).

    :param size: ``"10G"`` or bytes (see :func:`~corral.storage.volumes.parse_volume_size`).
    :param fmt: ``qcow2`` or ``raw``.
    :raise InvalidInput: a bad name, size, format or description (naming the field).
    :raise NotFound: no such project, or ``actor`` is no member of it.
    :raise Forbidden: ``actor``'s role may not create.
    :raise AlreadyExists: the project has a volume of that name.
    :raise QuotaExceeded: the project's disk quota would be exceeded.
    :raise InsufficientCapacity: the datastore cannot hold the provisioned size.
    :raise ToolError: qemu-img failed (nothing is left behind).
    """
    project = DEFAULT_PROJECT if project is None else project
    detail = {"size": size, "format": fmt}
    written: Path | None = None
    try:
        with audited(ctx, actor, "volume.create", "volume", name, project, detail) as op:
            check_name(name)
            nbytes = parse_volume_size(size)
            volume_format = check_volume_format(fmt)
            check_description(description)
            op.detail["size"] = nbytes
            session = op.session
            project_id = find_project(session, actor, project).id
            authorize(actor, Action.CREATE, "project", project, project_id)
            _check_name_free(session, project_id, name)
            demand = Demand(instances=0, disk=nbytes)
            check_project_quota(ctx, project_id, demand)  # a quick refusal, before the file
            _check_capacity(ctx, nbytes)
            volume_id = str(uuid.uuid4())
            written = _write_file(ctx, volume_id, volume_format, nbytes)
            reserve(session, project_id, demand)  # the check that counts, under the lock
            row = VolumeRow(
                id=volume_id,
                name=name,
                project_id=project_id,
                format=volume_format,
                size=nbytes,
                description=description,
            )
            session.add(row)
            _flush_named(session, name)
    except BaseException:
        if written is not None:
            _discard(written)
        raise
    return _view(ctx, row, project, None)


def _check_name_free(session: Session, project_id: str, name: str) -> None:
    taken = select(VolumeRow.id).where(VolumeRow.project_id == project_id, VolumeRow.name == name)
    if session.scalars(taken).first() is not None:
        raise AlreadyExists("volume", name)


def _flush_named(session: Session, name: str) -> None:
    """Flush; a unique-name violation (a concurrent create or rename won) is AlreadyExists."""
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyExists("volume", name) from exc


def _check_capacity(ctx: Corral, nbytes: int) -> None:
    """:raise InsufficientCapacity: the pool's file system cannot hold ``nbytes`` more
    (with ``capacity.disk_allocation_ratio`` of ``corral.toml``, as VMs' disks)."""
    from corral.compute import capacity
    from corral.compute.settings import load_settings
    from corral.storage.volumes import ensure_pool

    policy = load_settings(ctx.home).capacity
    free = capacity.host_free(ensure_pool(ctx.home.root))
    capacity.check(capacity.Demand(1, 0, 0, nbytes), free, policy)


def _write_file(ctx: Corral, volume_id: str, fmt: VolumeFormat, nbytes: int) -> Path:
    from corral.storage.volumes import create_volume_file, ensure_pool

    ensure_pool(ctx.home.root)
    path = volume_path(ctx.home.root, volume_id, fmt)
    create_volume_file(path, fmt, nbytes)
    return path


def _discard(path: Path) -> None:
    """Remove a file this operation wrote, while its error propagates (which a failure to
    remove it must not hide)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def update_volume(
    ctx: Corral,
    actor: Principal,
    name: str,
    project: str | None = None,
    new_name: str | None = None,
    description: str | None = None,
) -> VolumeView:
    """Rename a volume within its project, or change its description; ``None`` keeps each.

    :raise InvalidInput: a bad new name or description (naming the field); see
        :func:`find_volume` for ``project``.
    :raise NotFound: no such volume, or not visible to ``actor``.
    :raise Forbidden: ``actor``'s role may not change it.
    :raise AlreadyExists: the project has a volume called ``new_name``.
    """
    changes: dict[str, Any] = {}
    if new_name is not None:
        changes["name"] = new_name
    if description is not None:
        changes["description"] = description
    with audited(ctx, actor, "volume.update", "volume", name, project, changes) as op:
        if new_name is not None:
            check_name(new_name)
        if description is not None:
            check_description(description)
        row = find_volume(op.session, actor, name, project)
        op.project = _project_name(op.session, row.project_id)
        authorize(actor, Action.OPERATE, "volume", name, row.project_id)
        if new_name is not None and new_name != row.name:
            _check_name_free(op.session, row.project_id, new_name)
            row.name = new_name
        if description is not None:
            row.description = description
        _flush_named(op.session, row.name)
        return _view_of(ctx, op.session, row)


def delete_volume(ctx: Corral, actor: Principal, name: str, project: str | None = None) -> None:
    """Delete a detached volume with its file.

    :raise NotFound: no such volume, or not visible to ``actor`` (see :func:`find_volume`).
    :raise Forbidden: ``actor``'s role may not delete.
    :raise InUse: it is attached to a VM (naming it).
    """
    with audited(ctx, actor, "volume.delete", "volume", name, project) as op:
        row = find_volume(op.session, actor, name, project)
        op.project = _project_name(op.session, row.project_id)
        authorize(actor, Action.DELETE, "volume", name, row.project_id)
        path = _file(ctx, row)
        gone = op.session.execute(
            delete(VolumeRow)
            .where(VolumeRow.id == row.id, VolumeRow.attached_to.is_(None))
            .execution_options(synchronize_session=False)
        )
        if getattr(gone, "rowcount", 0) != 1:
            op.session.refresh(row)
            vm = _attached_name(op.session, row.attached_to) or "a vm"
            raise InUse("volume", name, [f"vm {vm}"])
    # The row is gone (committed): the file goes after it, so that no row ever names a
    # missing file; a file whose removal fails is an orphan in the pool, named by no row.
    from corral.storage.volumes import remove_volume_file

    remove_volume_file(path)


# -- the listing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One line of a listing before its file is measured."""

    name: str
    project_id: str
    volume: VolumeRow | None = None
    attached_to: str | None = None
    vm: VmRow | None = None
    disk: str | None = None
    image: str | None = None


def page_volumes(
    ctx: Corral,
    principal: Principal,
    filters: VolumeFilter | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[VolumeView], int]:
    """One page of the volumes and VM disks ``principal`` sees, by name then project, and
    how many there are in all. Only the page's files are measured.

    :raise NotFound: ``filters.project`` names no project ``principal`` sees.
    """
    f = filters or VolumeFilter()
    with ctx.db.session() as session:
        project_id = None if f.project is None else find_project(session, principal, f.project).id
        entries: list[_Entry] = []
        if f.kind in (None, "volume"):
            entries += _volume_entries(session, principal, project_id, f.attached)
        if f.kind in (None, "vm-disk") and f.attached is not False:
            entries += _disk_entries(session, principal, project_id)
        if f.name is not None:
            entries = [e for e in entries if f.name in e.name]
        names = {row.id: row.name for row in session.scalars(select(ProjectRow))}
        entries.sort(key=lambda e: (e.name, names.get(e.project_id, e.project_id)))
        chosen = entries[offset : offset + limit]
        views = [_entry_view(ctx, e, names.get(e.project_id, e.project_id)) for e in chosen]
    return views, len(entries)


def _volume_entries(
    session: Session, principal: Principal, project_id: str | None, attached: bool | None
) -> list[_Entry]:
    query = (
        select(VolumeRow, VmRow.name)
        .outerjoin(VmRow, VmRow.id == VolumeRow.attached_to)
        .where(visible(principal, VolumeRow.project_id))
    )
    if project_id is not None:
        query = query.where(VolumeRow.project_id == project_id)
    if attached is not None:
        has_vm = VolumeRow.attached_to.is_not(None)
        query = query.where(has_vm if attached else VolumeRow.attached_to.is_(None))
    return [
        _Entry(row.name, row.project_id, volume=row, attached_to=vm)
        for row, vm in session.execute(query)
    ]


def _disk_entries(session: Session, principal: Principal, project_id: str | None) -> list[_Entry]:
    query = select(VmRow).where(visible(principal, VmRow.project_id))
    if project_id is not None:
        query = query.where(VmRow.project_id == project_id)
    entries = []
    for vm in session.scalars(query):
        for disk in json.loads(vm.spec).get("disks", []):
            entries.append(
                _Entry(
                    f"{vm.name}/{disk['name']}",
                    vm.project_id,
                    attached_to=vm.name,
                    vm=vm,
                    disk=disk["name"],
                    image=disk.get("image"),
                )
            )
    return entries


def _entry_view(ctx: Corral, entry: _Entry, project: str) -> VolumeView:
    if entry.volume is not None:
        return _view(ctx, entry.volume, project, entry.attached_to)
    from corral.compute import records
    from corral.storage.disks import disk_usage

    assert entry.vm is not None and entry.disk is not None
    top = records.wrap(ctx, entry.vm).paths.disks[entry.disk].top
    try:
        usage = disk_usage(Path(top.path), top.format)
        size, used = usage.provisioned, usage.used
    except CorralError:
        size = used = 0
    return VolumeView(
        name=entry.name,
        project=project,
        kind="vm-disk",
        format=top.format,
        size=size,
        used=used,
        attached_to=entry.attached_to,
        description="",
        image=entry.image,
        created_at=as_utc(entry.vm.created_at).isoformat(),
    )
