"""Who is asking, and the pure rules of what they may do.

A :class:`Principal` is the caller of one request: a user authenticated by a token or a
password, or the local administrator (the state directory's owner, or root, on the UNIX
socket). Its global :class:`Role` says what it may do, its projects say where::

    action    viewer           operator         admin
    read      own projects     own projects     every project
    create    -                own projects     every project
    operate   -                own projects     every project
    delete    -                own projects     every project
    admin     -                -                yes (users, projects, quotas, audit log)

An object of a project the caller is no member of does not exist for it: :func:`authorize`
answers :class:`~corral.errors.NotFound`, never :class:`~corral.errors.Forbidden`, so that
neither its existence nor its data leaks. ``Forbidden`` is only for objects the caller may
read but not change (a viewer asking to delete a VM of its project).

Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from corral.errors import Forbidden, InvalidInput, NotFound


class Role(StrEnum):
    """A user's global role; it holds in every project the user is a member of."""

    #: Everything, in every project; the only role that manages users, projects and quotas.
    ADMIN = "admin"
    #: Reads, creates, operates and deletes objects of its projects.
    OPERATOR = "operator"
    #: Reads objects of its projects.
    VIEWER = "viewer"


class Action(StrEnum):
    """What a request does to an object; each service operation names one."""

    #: List and show objects, read a console log.
    READ = "read"
    #: Define, launch, import, create.
    CREATE = "create"
    #: Start, stop, reboot, pause, snapshot, attach to a console.
    OPERATE = "operate"
    #: Delete, revoke.
    DELETE = "delete"
    #: Manage users, projects, memberships, quotas; read the audit log.
    ADMIN = "admin"


#: The actions each role may take inside the projects it may act in.
ROLE_ACTIONS: Mapping[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.OPERATOR: frozenset({Action.READ, Action.CREATE, Action.OPERATE, Action.DELETE}),
    Role.ADMIN: frozenset(Action),
}


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    #: A user's name, or ``local:<uid>`` for the local administrator.
    name: str
    role: Role
    #: Ids of the projects the user is a member of (an admin acts in every project anyway).
    project_ids: frozenset[str] = frozenset()
    #: Trusted by its peer credentials on the UNIX socket, not by a token or password.
    is_local: bool = False
    #: The user's id; ``None`` for the local administrator, who has no user record.
    user_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the role is :attr:`Role.ADMIN`."""
        return self.role is Role.ADMIN


def parse_role(text: str) -> Role:
    """The role named ``text``.

    :raise InvalidInput: it names no role (field ``role``).
    """
    try:
        return Role(text)
    except ValueError:
        allowed = ", ".join(role.value for role in Role)
        raise InvalidInput("role", f"{text!r} is not a role; use one of {allowed}") from None


def can(principal: Principal, action: Action, project_id: str | None = None) -> bool:
    """Whether ``principal`` may take ``action`` in the project ``project_id``.

    :param project_id: the project of the object acted on; ``None`` for what belongs to no
        project (users, the project list itself), which only an admin may change.
    """
    if action not in ROLE_ACTIONS[principal.role]:
        return False
    if principal.is_admin:
        return True
    return project_id is not None and project_id in principal.project_ids


def visible_projects(principal: Principal) -> frozenset[str] | None:
    """Ids of the projects whose objects ``principal`` sees; ``None`` means every project."""
    return None if principal.is_admin else principal.project_ids


def authorize(
    principal: Principal, action: Action, kind: str, name: str, project_id: str | None
) -> None:
    """Check ``principal`` may take ``action`` on the object ``kind`` ``name``.

    :param project_id: the object's project.
    :raise NotFound: the object is in a project ``principal`` may not read: it does not exist
        for it.
    :raise Forbidden: ``principal`` may read the object but its role does not allow
        ``action``.
    """
    if not can(principal, Action.READ, project_id):
        raise NotFound(kind, name)
    if not can(principal, action, project_id):
        raise Forbidden(principal.name, principal.role.value, action.value, f"{kind} {name!r}")


def require_admin(principal: Principal, what: str) -> None:
    """Check ``principal`` is an admin.

    :param what: what is being managed, for the message (``users``, ``project 'p1'``).
    :raise Forbidden: it is not.
    """
    if not principal.is_admin:
        raise Forbidden(principal.name, principal.role.value, "manage", what)
