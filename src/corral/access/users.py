"""Users: a global role, membership of projects, an optional password, API tokens.

A user without a password authenticates with tokens only. Passwords are kept as argon2id
hashes (:mod:`corral.access.passwords`), never in clear, and never appear in the audit log.
A disabled user keeps its record, memberships and tokens, but its tokens and password are
refused until it is enabled again.

Admins manage users; any user may read itself and change its own password. To anyone else
another user does not exist (:class:`~corral.errors.NotFound`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.access import passwords
from corral.access.audit import audited
from corral.access.checks import check_user_name, is_user_name
from corral.access.principal import Principal, Role, parse_role, require_admin
from corral.access.projects import find_project
from corral.errors import AlreadyExists, NotFound, Unauthenticated
from corral.store.models import MembershipRow, ProjectRow, TokenRow, UserRow, as_utc

if TYPE_CHECKING:
    from corral.compute.context import Corral


@dataclass(frozen=True)
class UserView:
    """A user, as listings and ``show`` present it (never its password hash)."""

    id: str
    name: str
    role: str
    disabled: bool
    has_password: bool
    #: Names of the projects it is a member of.
    projects: tuple[str, ...]
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _projects_of(session: Session, user_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """For each user id, its projects as ``(id, name)``, by name."""
    query = (
        select(MembershipRow.user_id, ProjectRow.id, ProjectRow.name)
        .join(ProjectRow, ProjectRow.id == MembershipRow.project_id)
        .where(MembershipRow.user_id.in_(user_ids))
        .order_by(ProjectRow.name)
    )
    out: dict[str, list[tuple[str, str]]] = {}
    for user_id, project_id, project in session.execute(query):
        out.setdefault(user_id, []).append((project_id, project))
    return out


def _views(session: Session, rows: Sequence[UserRow]) -> list[UserView]:
    projects = _projects_of(session, [row.id for row in rows])
    return [
        UserView(
            id=row.id,
            name=row.name,
            role=row.role,
            disabled=row.disabled,
            has_password=row.password_hash is not None,
            projects=tuple(name for _, name in projects.get(row.id, ())),
            created_at=as_utc(row.created_at).isoformat(),
        )
        for row in rows
    ]


def principal_of(session: Session, user: UserRow) -> Principal:
    """The principal ``user`` acts as: its role and its projects' ids (now, from the DB)."""
    projects = _projects_of(session, [user.id]).get(user.id, [])
    return Principal(
        name=user.name,
        role=Role(user.role),
        project_ids=frozenset(project_id for project_id, _ in projects),
        user_id=user.id,
    )


def _by_name(session: Session, name: str) -> UserRow | None:
    if not is_user_name(name):  # no such name can exist; keep it off SQL
        return None
    return session.scalars(select(UserRow).where(UserRow.name == name)).first()


def find_user(session: Session, actor: Principal, name: str) -> UserRow:
    """The user ``name``, if ``actor`` may see it (an admin sees all, a user itself).

    :raise NotFound: no such user, or not ``actor``'s to see.
    """
    row = _by_name(session, name)
    if row is None or not (actor.is_admin or row.id == actor.user_id):
        raise NotFound("user", name)
    return row


def create_user(
    ctx: Corral,
    actor: Principal,
    name: str,
    role: str,
    projects: Sequence[str] = (),
    password: str | None = None,
) -> UserView:
    """Create a user, a member of ``projects``.

    :param role: ``admin``, ``operator`` or ``viewer``.
    :param password: hashed with argon2id; ``None``: the user authenticates by token only.
    :raise Forbidden: ``actor`` is not an admin.
    :raise InvalidInput: a bad name, role or password (field ``name``, ``role``,
        ``password``).
    :raise NotFound: a project does not exist.
    :raise AlreadyExists: a user has that name.
    """
    detail = {"role": role, "projects": list(projects), "password": password is not None}
    with audited(ctx, actor, "user.create", "user", name, detail=detail) as op:
        require_admin(actor, "users")
        check_user_name(name)
        parsed = parse_role(role)
        hashed = None if password is None else passwords.hash_password(password)
        session = op.session
        members = [find_project(session, actor, project) for project in dict.fromkeys(projects)]
        if session.scalars(select(UserRow.id).where(UserRow.name == name)).first():
            raise AlreadyExists("user", name)
        row = UserRow(
            id=str(uuid.uuid4()),
            name=name,
            role=parsed.value,
            password_hash=hashed,
            disabled=False,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExists("user", name) from None
        for project in members:
            session.add(MembershipRow(user_id=row.id, project_id=project.id))
        session.flush()
        return _views(session, [row])[0]


def list_users(ctx: Corral, actor: Principal) -> list[UserView]:
    """Every user, by name, for an admin; only itself for anyone else."""
    query = select(UserRow).order_by(UserRow.name)
    if not actor.is_admin:
        query = query.where(UserRow.id == (actor.user_id or ""))
    with ctx.db.session() as session:
        return _views(session, list(session.scalars(query)))


def get_user(ctx: Corral, actor: Principal, name: str) -> UserView:
    """:raise NotFound: no such user, or not ``actor``'s to see."""
    with ctx.db.session() as session:
        return _views(session, [find_user(session, actor, name)])[0]


def delete_user(ctx: Corral, actor: Principal, name: str) -> None:
    """Delete a user with its tokens and memberships; the objects it made stay.

    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such user.
    """
    with audited(ctx, actor, "user.delete", "user", name) as op:
        require_admin(actor, "users")
        row = find_user(op.session, actor, name)
        op.session.execute(delete(TokenRow).where(TokenRow.user_id == row.id))
        op.session.execute(delete(MembershipRow).where(MembershipRow.user_id == row.id))
        op.session.delete(row)
        op.session.flush()


def set_disabled(ctx: Corral, actor: Principal, name: str, disabled: bool) -> bool:
    """Disable or enable a user.

    :return: whether that changed anything.
    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such user.
    """
    action = "user.disable" if disabled else "user.enable"
    with audited(ctx, actor, action, "user", name) as op:
        require_admin(actor, "users")
        row = find_user(op.session, actor, name)
        changed = row.disabled != disabled
        row.disabled = disabled
        op.detail["changed"] = changed
    return changed


def set_role(ctx: Corral, actor: Principal, name: str, role: str) -> UserView:
    """Give a user another role; it holds from its next request on.

    :raise Forbidden: ``actor`` is not an admin.
    :raise NotFound: no such user.
    :raise InvalidInput: no such role (field ``role``).
    """
    with audited(ctx, actor, "user.set_role", "user", name, detail={"role": role}) as op:
        require_admin(actor, "users")
        parsed = parse_role(role)
        row = find_user(op.session, actor, name)
        op.detail["previous"] = row.role
        row.role = parsed.value
        op.session.flush()
        return _views(op.session, [row])[0]


def set_password(ctx: Corral, actor: Principal, name: str, password: str | None) -> None:
    """Set (or, with ``None``, remove) a user's password; a user may set its own.

    :raise NotFound: no such user, or another user's and ``actor`` is not an admin.
    :raise InvalidInput: the password breaks the rules (field ``password``).
    """
    detail = {"removed": password is None}
    with audited(ctx, actor, "user.set_password", "user", name, detail=detail) as op:
        row = find_user(op.session, actor, name)
        row.password_hash = None if password is None else passwords.hash_password(password)


def authenticate_password(ctx: Corral, name: str, password: str) -> Principal:
    """The principal of user ``name``, if ``password`` is its password.

    An unknown user, a user without a password, a wrong password and a disabled user all
    take the same time (one argon2 verification) and raise the same error.

    :raise Unauthenticated: any of those; :attr:`~corral.errors.Unauthenticated.reason`
        says which.
    """
    with ctx.db.session() as session:
        row = _by_name(session, name)
        stored = None if row is None else row.password_hash
        if not passwords.verify_password(stored, password) or row is None:
            raise Unauthenticated("no such user, no password, or a wrong password")
        if row.disabled:
            raise Unauthenticated(f"user {name!r} is disabled")
        if stored is not None and passwords.needs_rehash(stored):
            row.password_hash = passwords.HASHER.hash(password)
        return principal_of(session, row)
