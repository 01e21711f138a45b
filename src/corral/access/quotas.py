"""Quotas: how many instances, vCPUs, bytes of memory and of disk a project may hold.

A project's :class:`Usage` is computed from the database, not counted apart (a counter can
drift from the rows it counts): every VM of the project counts one instance, its spec's vCPUs
and memory, and the provisioned (virtual) size of its disks: a disk's ``size``, or for a
clone that keeps its image's size, the image's virtual size. The seed ISO is not counted.
Every VM counts, running or not: a defined VM holds its disks and may start at any time.
Every volume of the project counts its provisioned size as disk, attached or not (a volume
attached to a VM is not among the VM's disks, so nothing is counted twice).

:func:`check_quota` is pure. :func:`reserving` makes the check and the insert atomic:

* it opens one transaction and first takes a lock that every other creator in the same
  project must also take: on PostgreSQL ``SELECT ... FOR UPDATE`` of the project's row; on
  SQLite an ``UPDATE`` of that row that changes nothing, which takes the database's write
  lock at once (what ``BEGIN IMMEDIATE`` does; the other writers wait up to the busy
  timeout);
* under the lock it computes the usage from the committed rows, checks the demand, and hands
  the session to the caller, who inserts the new row (:func:`reserve` does the same in a
  transaction the caller already has);
* the commit publishes the row and releases the lock; the next creator computes its usage
  with that row in it (PostgreSQL's READ COMMITTED gives each statement a fresh snapshot, so
  the usage query after the lock sees it).

So two creates that would each fit but not both never both succeed. A quota lowered below
the usage refuses new objects and leaves the existing ones alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from corral.access.audit import audited
from corral.access.principal import Action, Principal, authorize, require_admin
from corral.access.projects import find_project
from corral.errors import InvalidInput, NotFound, QuotaExceeded
from corral.store.models import ImageRow, ProjectRow, QuotaRow, VmRow, VolumeRow
from corral.units import format_size

if TYPE_CHECKING:
    from corral.compute.context import Corral
    from corral.spec.vm import VmSpec

#: The quotas, in the order they are checked.
RESOURCES = ("instances", "vcpus", "memory", "disk")
#: Quotas counted in bytes (the others are counts).
BYTE_RESOURCES = frozenset({"memory", "disk"})
#: The largest limit of each quota: what its column holds (counts in 32 bits, bytes in 64).
MAX_LIMITS = {"instances": 2**31 - 1, "vcpus": 2**31 - 1, "memory": 2**63 - 1, "disk": 2**63 - 1}


@dataclass(frozen=True)
class Usage:
    """What a project holds now."""

    instances: int = 0
    vcpus: int = 0
    #: Guest memory of all its VMs, in bytes.
    memory: int = 0
    #: Provisioned size of all its VMs' disks and of its volumes, in bytes.
    disk: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Demand:
    """What a create asks for on top of the usage (one VM, by default; a volume asks for
    ``Demand(instances=0, disk=size)``)."""

    instances: int = 1
    vcpus: int = 0
    memory: int = 0
    disk: int = 0


@dataclass(frozen=True)
class Quota:
    """The limits of one project; ``None`` is unlimited."""

    #: The project's name, for messages.
    project: str
    instances: int | None = None
    vcpus: int | None = None
    memory: int | None = None
    disk: int | None = None

    def limits(self) -> dict[str, int | None]:
        """The limits by resource name."""
        return {name: getattr(self, name) for name in RESOURCES}


@dataclass(frozen=True)
class QuotaView:
    """A project's quota beside its usage."""

    project: str
    #: By resource; ``None`` is unlimited.
    limits: dict[str, int | None]
    usage: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _amount(resource: str, value: int) -> str:
    if resource in BYTE_RESOURCES:
        return format_size(value)
    unit = {"instances": "instance", "vcpus": "vCPU"}[resource]
    return f"{value} {unit}{'' if value == 1 else 's'}"


def check_quota(usage: Usage, quota: Quota, demand: Demand) -> None:
    """Refuse a demand that would take the project past a quota.

    A resource the demand does not ask for is not checked (a VM without disks is not refused
    because the disks of others already exceed a lowered disk quota).

    :raise QuotaExceeded: naming the first quota exceeded, its limit, the usage and the
        demand.
    """
    for resource in RESOURCES:
        limit: int | None = getattr(quota, resource)
        wanted: int = getattr(demand, resource)
        used: int = getattr(usage, resource)
        if limit is None or wanted <= 0 or used + wanted <= limit:
            continue
        raise QuotaExceeded(
            quota.project,
            resource,
            limit,
            used,
            wanted,
            f"{_amount(resource, used)} in use + {_amount(resource, wanted)} asked for = "
            f"{_amount(resource, used + wanted)}, over the quota of {_amount(resource, limit)}",
        )


def vm_usage(spec: VmSpec, image_sizes: Mapping[str, int]) -> Usage:
    """What one VM holds (pure).

    :param image_sizes: virtual size of each image by name, for clones without a size.
    """
    disk = 0
    for d in spec.disks:
        if d.size is not None:
            disk += d.size
        elif d.image is not None:
            disk += image_sizes.get(d.image, 0)
    return Usage(instances=1, vcpus=spec.vcpus, memory=spec.memory, disk=disk)


def demand_of(spec: VmSpec, image_sizes: Mapping[str, int]) -> Demand:
    """What creating the VM ``spec`` asks for (pure)."""
    usage = vm_usage(spec, image_sizes)
    return Demand(usage.instances, usage.vcpus, usage.memory, usage.disk)


def image_sizes(session: Session, names: Iterable[str]) -> dict[str, int]:
    """Virtual size of each of the images ``names`` that exists."""
    wanted = set(names)
    if not wanted:
        return {}
    query = select(ImageRow.name, ImageRow.virtual_size).where(ImageRow.name.in_(wanted))
    return dict(session.execute(query).all())


def project_usage(session: Session, project_id: str) -> Usage:
    """What the project holds now, from its VMs' specs, their images' sizes and its volumes'
    sizes."""
    from corral.spec.vm import VmSpec

    specs = [
        VmSpec.model_validate_json(raw)
        for raw in session.scalars(select(VmRow.spec).where(VmRow.project_id == project_id))
    ]
    sizes = image_sizes(session, (d.image for s in specs for d in s.disks if d.image))
    volumes = session.scalar(
        select(func.coalesce(func.sum(VolumeRow.size), 0)).where(VolumeRow.project_id == project_id)
    )
    total = Usage(disk=int(volumes or 0))
    for spec in specs:
        total = total + vm_usage(spec, sizes)
    return total


def load_quota(session: Session, project: ProjectRow) -> Quota:
    """The quota of ``project`` (unlimited when it has none)."""
    row = session.get(QuotaRow, project.id)
    if row is None:
        return Quota(project.name)
    return Quota(project.name, row.instances, row.vcpus, row.memory, row.disk)


def lock_project(session: Session, project_id: str) -> ProjectRow:
    """Take the lock that serialises the creates of one project, until ``session`` ends.

    PostgreSQL: ``SELECT ... FOR UPDATE`` of the project's row. SQLite: an ``UPDATE`` of
    that row that changes nothing, which takes the database's write lock (``BEGIN
    IMMEDIATE`` semantics: the transaction cannot be overtaken by another writer).

    :raise NotFound: there is no such project.
    """
    query = select(ProjectRow).where(ProjectRow.id == project_id)
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(ProjectRow)
            .where(ProjectRow.id == project_id)
            .values(description=ProjectRow.description)
            .execution_options(synchronize_session=False)
        )
    else:
        query = query.with_for_update()
    row = session.scalars(query.execution_options(populate_existing=True)).first()
    if row is None:
        raise NotFound("project", project_id)
    return row


def check_project_quota(ctx: Corral, project_id: str, demand: Demand) -> None:
    """Check ``demand`` fits, without a lock: a quick refusal before slow work (cloning
    disks); :func:`reserving` checks again, atomically, when the row is inserted.

    :raise NotFound: no such project.
    :raise QuotaExceeded: it does not fit now.
    """
    with ctx.db.session() as session:
        project = session.get(ProjectRow, project_id)
        if project is None:
            raise NotFound("project", project_id)
        _check_fits(session, project, demand)


def _check_fits(session: Session, project: ProjectRow, demand: Demand) -> None:
    """:func:`check_quota` of ``demand`` against ``project``'s usage now; a project with no
    limit set is not measured (its usage reads every VM spec of the project)."""
    quota = load_quota(session, project)
    if all(getattr(quota, resource) is None for resource in RESOURCES):
        return
    check_quota(project_usage(session, project.id), quota, demand)


def reserve(session: Session, project_id: str, demand: Demand) -> None:
    """Take the project's lock in ``session`` and check ``demand`` fits under it; the
    caller inserts its row in the same transaction, whose commit publishes the row and
    releases the lock (what :func:`reserving` does, in a transaction the caller already has,
    such as an :func:`~corral.access.audit.audited` one).

    :raise NotFound: no such project.
    :raise QuotaExceeded: the demand does not fit.
    """
    _check_fits(session, lock_project(session, project_id), demand)


@contextmanager
def reserving(ctx: Corral, project_id: str, demand: Demand) -> Iterator[Session]:
    """A transaction in which ``demand`` fits the project's quota, for the caller's insert.

    Usage::

        with reserving(ctx, project_id, demand_of(spec, sizes)) as session:
            session.add(VmRow(..., project_id=project_id))

    The check and the insert are atomic (see the module's docstring); the insert is
    committed when the block ends without error.

    :raise NotFound: no such project.
    :raise QuotaExceeded: the demand does not fit; nothing was inserted.
    """
    with ctx.db.session() as session:
        reserve(session, project_id, demand)
        yield session


def _view(session: Session, project: ProjectRow) -> QuotaView:
    usage = project_usage(session, project.id)
    return QuotaView(
        project=project.name,
        limits=load_quota(session, project).limits(),
        usage={name: getattr(usage, name) for name in RESOURCES},
    )


def get_quota(ctx: Corral, actor: Principal, project: str) -> QuotaView:
    """The quota and usage of ``project``; its members may read them.

    :raise NotFound: no such project, or ``actor`` is no member of it.
    """
    with ctx.db.session() as session:
        row = find_project(session, actor, project)
        authorize(actor, Action.READ, "project", project, row.id)
        return _view(session, row)


def check_limits(limits: Mapping[str, int | None]) -> None:
    """:raise InvalidInput: an unknown resource, or a limit that is negative or larger than
    :data:`MAX_LIMITS` allows (naming the resource)."""
    for name, value in limits.items():
        if name not in RESOURCES:
            raise InvalidInput(name, f"no such quota; quotas are {', '.join(RESOURCES)}")
        if value is not None and not 0 <= value <= MAX_LIMITS[name]:
            raise InvalidInput(name, f"must be between 0 and {MAX_LIMITS[name]}, not {value}")


def set_quota(
    ctx: Corral, actor: Principal, project: str, limits: Mapping[str, int | None]
) -> QuotaView:
    """Change some of a project's limits; the others keep theirs.

    :param limits: new limits by resource (:data:`RESOURCES`); ``None`` makes one unlimited.
    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such project.
    :raise InvalidInput: an unknown resource or a negative limit (naming it).
    """
    with audited(
        ctx, actor, "quota.set", "project", project, project=project, detail=dict(limits)
    ) as op:
        require_admin(actor, f"the quota of project {project!r}")
        check_limits(limits)
        row = find_project(op.session, actor, project)
        quota = op.session.get(QuotaRow, row.id)
        merged = {**load_quota(op.session, row).limits(), **limits}
        if all(value is None for value in merged.values()):
            if quota is not None:
                op.session.delete(quota)  # unlimited everywhere: no row at all
        else:
            if quota is None:
                quota = QuotaRow(project_id=row.id)
                op.session.add(quota)
            for name, value in merged.items():
                setattr(quota, name, value)
        op.session.flush()
        return _view(op.session, row)


def clear_quota(ctx: Corral, actor: Principal, project: str) -> QuotaView:
    """Make every limit of ``project`` unlimited.

    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such project.
    """
    return set_quota(ctx, actor, project, dict.fromkeys(RESOURCES))
