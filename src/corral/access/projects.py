"""Projects (tenancy) and their members.

Every VM, image and key pair belongs to one project; users are members of some. The project
``default`` exists from the first migration on and owns what is created without a project;
it cannot be deleted. A project that still owns objects cannot be deleted either
(:class:`~corral.errors.InUse` lists them): deleting a project never deletes a VM.

Only admins create and delete projects and change their members; a member reads its project,
and to anyone else another project does not exist (:class:`~corral.errors.NotFound`).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.access import checks
from corral.access.audit import audited
from corral.access.checks import check_description, check_project_name, is_project_name
from corral.access.principal import Principal, require_admin, visible_projects
from corral.errors import AlreadyExists, InUse, InvalidInput, NotFound
from corral.store.models import (
    DEFAULT_PROJECT,
    ImageRow,
    KeyPairRow,
    MembershipRow,
    ProjectRow,
    QuotaRow,
    UserRow,
    VmRow,
    VolumeRow,
    as_utc,
)

if TYPE_CHECKING:
    from corral.compute.context import Corral

#: A project's name (:mod:`corral.access.checks` holds the rules).
PROJECT_NAME_PATTERN = checks.PROJECT_NAME_PATTERN

#: How many of the objects that keep a project alive :class:`InUse` names.
_SHOWN_OWNED = 5

#: A table of objects a project owns.
OwnedModel = type[VmRow] | type[ImageRow] | type[KeyPairRow] | type[VolumeRow]

#: The tables of objects a project owns, with the kind each holds.
OWNED_KINDS: tuple[tuple[str, OwnedModel], ...] = (
    ("vm", VmRow),
    ("image", ImageRow),
    ("key pair", KeyPairRow),
    ("volume", VolumeRow),
)


@dataclass(frozen=True)
class ProjectView:
    """A project, as listings and ``show`` present it."""

    id: str
    name: str
    description: str
    created_at: str
    #: Names of the member users.
    members: tuple[str, ...]
    vms: int
    images: int
    keypairs: int
    volumes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_project(session: Session, principal: Principal, name: str) -> ProjectRow:
    """The project ``name``, if ``principal`` may see it.

    :raise NotFound: there is no such project, or ``principal`` is no member of it.
    """
    if not is_project_name(name):  # no such name can exist; keep it off SQL
        raise NotFound("project", name)
    row = session.scalars(select(ProjectRow).where(ProjectRow.name == name)).first()
    visible = visible_projects(principal)
    if row is None or (visible is not None and row.id not in visible):
        raise NotFound("project", name)
    return row


def _counts(session: Session, model: OwnedModel) -> Any:
    query = select(model.project_id, func.count()).group_by(model.project_id)
    return dict(session.execute(query).all())


def _views(session: Session, rows: list[ProjectRow]) -> list[ProjectView]:
    members: dict[str, list[str]] = {}
    query = (
        select(MembershipRow.project_id, UserRow.name)
        .join(UserRow, UserRow.id == MembershipRow.user_id)
        .order_by(UserRow.name)
    )
    for project_id, user in session.execute(query):
        members.setdefault(project_id, []).append(user)
    vms, images, keys, volumes = (_counts(session, model) for _, model in OWNED_KINDS)
    return [
        ProjectView(
            id=row.id,
            name=row.name,
            description=row.description,
            created_at=as_utc(row.created_at).isoformat(),
            members=tuple(members.get(row.id, ())),
            vms=vms.get(row.id, 0),
            images=images.get(row.id, 0),
            keypairs=keys.get(row.id, 0),
            volumes=volumes.get(row.id, 0),
        )
        for row in rows
    ]


def create_project(ctx: Corral, actor: Principal, name: str, description: str = "") -> ProjectView:
    """Create an empty project with no members and no quota.

    :raise Forbidden: ``actor`` is not an admin.
    :raise InvalidInput: a bad name or description.
    :raise AlreadyExists: a project has that name.
    """
    with audited(ctx, actor, "project.create", "project", name, project=name) as op:
        require_admin(actor, "projects")
        check_project_name(name)
        check_description(description)
        session = op.session
        if session.scalars(select(ProjectRow.id).where(ProjectRow.name == name)).first():
            raise AlreadyExists("project", name)
        row = ProjectRow(id=str(uuid.uuid4()), name=name, description=description)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExists("project", name) from None
        op.detail["id"] = row.id
        return _views(session, [row])[0]


def list_projects(ctx: Corral, actor: Principal) -> list[ProjectView]:
    """The projects ``actor`` sees (every one for an admin), by name."""
    visible = visible_projects(actor)
    query = select(ProjectRow).order_by(ProjectRow.name)
    if visible is not None:
        query = query.where(ProjectRow.id.in_(visible))
    with ctx.db.session() as session:
        return _views(session, list(session.scalars(query)))


def get_project(ctx: Corral, actor: Principal, name: str) -> ProjectView:
    """:raise NotFound: no such project, or ``actor`` is no member of it."""
    with ctx.db.session() as session:
        return _views(session, [find_project(session, actor, name)])[0]


def update_project(
    ctx: Corral, actor: Principal, name: str, description: str | None = None
) -> ProjectView:
    """Change what a project says of itself; what is left ``None`` stays.

    :raise NotFound: no such project, or ``actor`` is no member of it.
    :raise Forbidden: ``actor`` sees it but is not an admin.
    :raise InvalidInput: a bad description.
    """
    detail = {} if description is None else {"description": description}
    with audited(ctx, actor, "project.update", "project", name, project=name, detail=detail) as op:
        row = find_project(op.session, actor, name)
        require_admin(actor, f"project {name!r}")
        if description is not None:
            check_description(description)
            op.detail["changed"] = row.description != description
            row.description = description
        op.session.flush()
        return _views(op.session, [row])[0]


def owned_objects(session: Session, project_id: str) -> list[str]:
    """What the project owns, as ``<kind> <name>``, by kind then name."""
    owned: list[str] = []
    for kind, model in OWNED_KINDS:
        names = session.scalars(
            select(model.name).where(model.project_id == project_id).order_by(model.name)
        )
        owned.extend(f"{kind} {name}" for name in names)
    return owned


def delete_project(ctx: Corral, actor: Principal, name: str) -> None:
    """Delete an empty project with its memberships and quota.

    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such project.
    :raise InvalidInput: it is the project ``default``.
    :raise InUse: it still owns VMs, images or key pairs (the first few are named).
    """
    with audited(ctx, actor, "project.delete", "project", name, project=name) as op:
        require_admin(actor, f"project {name!r}")
        session = op.session
        row = find_project(session, actor, name)
        if row.name == DEFAULT_PROJECT:
            raise InvalidInput(
                "name", "the project default cannot be deleted: it owns what has no project"
            )
        owned = owned_objects(session, row.id)
        if owned:
            shown = owned[:_SHOWN_OWNED]
            if len(owned) > _SHOWN_OWNED:
                shown.append(f"{len(owned) - _SHOWN_OWNED} more")
            raise InUse("project", name, shown)
        session.execute(delete(MembershipRow).where(MembershipRow.project_id == row.id))
        session.execute(delete(QuotaRow).where(QuotaRow.project_id == row.id))
        session.delete(row)
        session.flush()


def _user(session: Session, name: str) -> UserRow:
    row = None
    if "\x00" not in name:  # which PostgreSQL refuses in a query
        row = session.scalars(select(UserRow).where(UserRow.name == name)).first()
    if row is None:
        raise NotFound("user", name)
    return row


def add_member(ctx: Corral, actor: Principal, project: str, user: str) -> bool:
    """Make ``user`` a member of ``project``.

    :return: whether it was not a member yet.
    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such project or user.
    """
    with audited(ctx, actor, "project.add_member", "user", user, project=project) as op:
        require_admin(actor, f"project {project!r}")
        row = find_project(op.session, actor, project)
        member = _user(op.session, user)
        added = op.session.get(MembershipRow, (member.id, row.id)) is None
        if added:
            op.session.add(MembershipRow(user_id=member.id, project_id=row.id))
            op.session.flush()
        op.detail["changed"] = added
    return added


def remove_member(ctx: Corral, actor: Principal, project: str, user: str) -> bool:
    """Take ``user`` out of ``project``; its objects stay in the project.

    :return: whether it was a member.
    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such project or user.
    """
    with audited(ctx, actor, "project.remove_member", "user", user, project=project) as op:
        require_admin(actor, f"project {project!r}")
        row = find_project(op.session, actor, project)
        member = _user(op.session, user)
        found = op.session.get(MembershipRow, (member.id, row.id))
        if found is not None:
            op.session.delete(found)
            op.session.flush()
        op.detail["changed"] = found is not None
    return found is not None
