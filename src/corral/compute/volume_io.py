"""Importing files as volumes and exporting volumes as files.

An import makes a qcow2 volume of a project from a disk image in any of the import formats
(raw, qcow2, vmdk, vdi), or one volume per disk of an OVA (``NAME``, ``NAME-1``, ...). What
can be refused without the file is refused first (:func:`check_import`: the name, the
format, the project, the caller's role, the name free); then :func:`import_volume` verifies
every file (:mod:`corral.storage.verify`), checks the quota and the datastore for the sum
of their virtual sizes, converts each into the pool, and adds the rows in one transaction
whose quota check holds the project's lock. A failure anywhere removes every file written
and the OVA's unpacked disks; no row is added unless all are.

An export converts a volume into a temporary copy in another format, for the caller to send
and remove (:func:`export_volume`). A volume attached to a VM whose QEMU runs is refused
(the copy would not be consistent): the VM is held stopped while the copy is made.

Every import and export, allowed or refused, is in the audit log.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, authorize
from corral.access.projects import find_project
from corral.access.quotas import Demand, check_project_quota, reserve
from corral.compute.context import Corral
from corral.compute.volumes import (
    VolumeView,
    _attached_name,
    _check_capacity,
    _check_name_free,
    _discard,
    _file,
    _flush_named,
    _project_name,
    _view,
    check_description,
    check_name,
    find_volume,
)
from corral.errors import InvalidInput
from corral.storage.formats import HEAD_BYTES, ImportFormat, validate_format
from corral.storage.volumes import check_volume_format, ensure_pool, volume_path
from corral.store.models import DEFAULT_PROJECT, VolumeRow

#: Told the fraction done (0.0 to 1.0) and what is being done.
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class _Source:
    """One disk to import: its file, the format to read it as, the volume it becomes."""

    path: Path
    fmt: ImportFormat | None
    name: str
    volume_id: str


def volume_names(name: str, count: int) -> list[str]:
    """The names of the volumes an OVA of ``count`` disks becomes: ``name``, ``name-1``, ...

    :raise InvalidInput: a name would be invalid (too long; field ``name``).
    """
    names = [name] + [f"{name}-{index}" for index in range(1, count)]
    for each in names:
        check_name(each)
    return names


def check_import(
    ctx: Corral, actor: Principal, name: str, fmt: str | None, project: str | None
) -> str:
    """Check what :func:`import_volume` would refuse before it reads a file.

    :return: the project's id.
    :raise InvalidInput: a bad name or format (naming the field).
    :raise NotFound: no such project, or ``actor`` is no member of it.
    :raise Forbidden: ``actor``'s role may not create.
    :raise AlreadyExists: the project has a volume of that name.
    """
    project = DEFAULT_PROJECT if project is None else project
    check_name(name)
    validate_format(fmt)
    with ctx.db.session() as session:
        project_id = find_project(session, actor, project).id
        authorize(actor, Action.CREATE, "project", project, project_id)
        _check_name_free(session, project_id, name)
    return project_id


def _is_ova(path: Path) -> bool:
    from corral.storage.ova import is_ova

    try:
        with path.open("rb") as file:
            return is_ova(file.read(HEAD_BYTES))
    except OSError:
        return False  # verification names what is wrong with it


@contextlib.contextmanager
def _sources(
    ctx: Corral, name: str, source: Path, fmt: ImportFormat | None
) -> Iterator[list[_Source]]:
    """The disks ``source`` holds; an OVA's are unpacked into the pool and removed on exit."""
    if fmt is not None or not _is_ova(source):
        yield [_Source(source, fmt, name, str(uuid.uuid4()))]
        return
    from corral.storage.ova import unpack_disks

    unpacked = Path(tempfile.mkdtemp(prefix=".ova-", dir=ensure_pool(ctx.home.root)))
    try:
        disks = unpack_disks(source, unpacked)
        names = volume_names(name, len(disks))
        yield [
            _Source(disk, "vmdk", each, str(uuid.uuid4()))
            for disk, each in zip(disks, names, strict=True)
        ]
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def import_volume(
    ctx: Corral,
    actor: Principal,
    name: str,
    source: Path,
    fmt: str | None = None,
    project: str | None = None,
    description: str = "",
    progress: Progress | None = None,
) -> list[VolumeView]:
    """Import ``source`` as qcow2 volume ``name`` of ``project`` (``default`` when ``None``);
    an OVA (detected when ``fmt`` is ``None``) as one volume per disk.

    :param fmt: the format the user says ``source`` is in; ``None`` to detect it.
    :param progress: told how far the conversion is.
    :return: the new volumes, in the OVA's order.
    :raise InvalidInput: a bad name, format or description (naming the field).
    :raise NotFound: no such project, or ``actor`` is no member of it.
    :raise Forbidden: ``actor``'s role may not create.
    :raise AlreadyExists: a name is taken in the project.
    :raise ImageError: a file is refused (verification, or the OVA's members).
    :raise QuotaExceeded: the project's disk quota would be exceeded.
    :raise InsufficientCapacity: the datastore cannot hold the provisioned sizes.
    :raise HostError: not enough free space, or a missing tool.
    :raise ToolError: qemu-img failed (nothing is left behind).
    """
    from corral.storage.verify import verify_image
    from corral.storage.volume_io import import_volume_file

    project = DEFAULT_PROJECT if project is None else project
    detail: dict[str, object] = {"format": fmt}
    written: list[Path] = []
    report = progress or (lambda _fraction, _what: None)
    try:
        with audited(ctx, actor, "volume.import", "volume", name, project, detail) as op:
            check_name(name)
            declared = validate_format(fmt)
            check_description(description)
            session = op.session
            project_id = find_project(session, actor, project).id
            authorize(actor, Action.CREATE, "project", project, project_id)
            report(0.0, "verifying")
            with _sources(ctx, name, source, declared) as disks:
                sizes = {d.name: verify_image(d.path, d.fmt).info.virtual_size for d in disks}
                for disk in disks:
                    _check_name_free(session, project_id, disk.name)
                demand = Demand(instances=0, disk=sum(sizes.values()))
                op.detail["size"] = demand.disk
                check_project_quota(ctx, project_id, demand)
                _check_capacity(ctx, demand.disk)
                rows: list[VolumeRow] = []
                op.detail["volumes"] = [disk.name for disk in disks]
                for index, disk in enumerate(disks):
                    dest = volume_path(ctx.home.root, disk.volume_id, "qcow2")
                    written.append(dest)
                    imported = import_volume_file(
                        disk.path, dest, disk.fmt, _part(report, index, len(disks))
                    )
                    op.detail["source_format"] = imported.source_format
                    rows.append(
                        VolumeRow(
                            id=disk.volume_id,
                            name=disk.name,
                            project_id=project_id,
                            format="qcow2",
                            size=imported.size,
                            description=description,
                        )
                    )
            reserve(session, project_id, demand)  # the check that counts, under the lock
            for row in rows:
                session.add(row)
                _flush_named(session, row.name)
    except BaseException:
        for path in written:
            _discard(path)
        raise
    return [_view(ctx, row, project, None) for row in rows]


def _part(report: Progress, index: int, count: int) -> Callable[[float], None]:
    """The progress of converting disk ``index`` of ``count`` as the whole import's."""
    what = "converting to qcow2" if count == 1 else f"converting disk {index + 1} of {count}"
    return lambda fraction: report((index + fraction) / count, what)


def _held_stopped(
    ctx: Corral, session: Session, row: VolumeRow
) -> contextlib.AbstractContextManager[None]:
    """The lock of the VM ``row`` is attached to, which must not be running; none if detached.

    :raise StateError: the VM's QEMU runs (or is starting or stopping).
    """
    vm = _attached_name(session, row.attached_to)
    if vm is None:
        return contextlib.nullcontext()
    return _stopped_vm(ctx, vm)


@contextlib.contextmanager
def _stopped_vm(ctx: Corral, vm: str) -> Iterator[None]:
    from sqlalchemy import select

    from corral.compute import records
    from corral.compute.lifecycle import holding
    from corral.compute.volume_attach import COLD
    from corral.errors import StateError
    from corral.store.models import VmRow

    with holding(ctx, vm):
        with ctx.db.session() as session:
            vm_row = session.scalars(select(VmRow).where(VmRow.name == vm)).first()
            state = None if vm_row is None else records.reconcile(records.wrap(ctx, vm_row))
        if state is not None and state not in COLD:
            allowed = sorted(s.value for s in COLD)
            raise StateError(vm, "export a volume of", state.value, allowed, "stop it first")
        yield


def export_volume(
    ctx: Corral,
    actor: Principal,
    name: str,
    to: str,
    directory: Path,
    project: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Convert volume ``name`` into a new temporary file of ``directory`` in format ``to``.

    :return: the copy; the caller removes it.
    :raise InvalidInput: ``to`` is not an import format (field ``format``); see
        :func:`~corral.compute.volumes.find_volume` for ``project``.
    :raise NotFound: no such volume, or not visible to ``actor``.
    :raise StateError: it is attached to a VM that runs.
    :raise ToolError: qemu-img failed (nothing is left behind).
    """
    from corral.storage.volume_io import export_volume_file

    copy: Path | None = None
    try:
        with audited(ctx, actor, "volume.export", "volume", name, project, {"format": to}) as op:
            target = validate_format(to)
            if target is None:
                raise InvalidInput("format", "name the format of the copy")
            row = find_volume(op.session, actor, name, project)
            op.project = _project_name(op.session, row.project_id)
            path, fmt = _file(ctx, row), check_volume_format(row.format)
            with _held_stopped(ctx, op.session, row):
                copy = export_volume_file(path, fmt, directory, target, progress)
            op.detail["bytes"] = copy.stat().st_size
    except BaseException:
        if copy is not None:
            _discard(copy)
        raise
    return copy
