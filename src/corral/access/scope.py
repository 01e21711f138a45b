"""Scoping queries of project-owned objects (VMs, images, key pairs) to what a caller sees.

The API layer lists with :func:`visible` in the ``WHERE`` clause and fetches one object with
:func:`find_owned`, so that an object of another project answers exactly as an object that
does not exist: :class:`~corral.errors.NotFound`, with no data.

Images of the ``default`` project are the host's public catalogue (as a cloud's public
images): every user reads them and launches from them; only who may change the ``default``
project changes them.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import ColumnElement, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from corral.access.principal import Action, Principal, authorize, can, visible_projects
from corral.errors import Forbidden, NotFound
from corral.store.models import DEFAULT_PROJECT_ID, ImageRow, KeyPairRow, VmRow

Owned = TypeVar("Owned", VmRow, ImageRow, KeyPairRow)


def visible(principal: Principal, column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """A ``WHERE`` clause on a ``project_id`` column: the rows ``principal`` may read.

    :param column: ``VmRow.project_id``, ``ImageRow.project_id``, ...; for images, those of
        the ``default`` project are everyone's.
    """
    projects = visible_projects(principal)
    if projects is None:
        return true()
    mine = column.in_(sorted(projects))
    return or_(mine, column == DEFAULT_PROJECT_ID) if column is ImageRow.project_id else mine


def find_owned(
    session: Session,
    principal: Principal,
    model: type[Owned],
    kind: str,
    name: str,
    action: Action = Action.READ,
) -> Owned:
    """The object ``name`` of ``model``, if ``principal`` may take ``action`` on it.

    :param kind: what the object is called in messages (``vm``, ``image``, ``key pair``).
    :raise NotFound: no such object, or it is in a project ``principal`` may not read.
    :raise Forbidden: ``principal`` reads it but may not take ``action``.
    """
    row = None
    if "\x00" not in name:  # which PostgreSQL refuses in a query
        row = session.scalars(select(model).where(model.name == name)).first()
    if row is None:
        raise NotFound(kind, name)
    public = isinstance(row, ImageRow) and row.project_id == DEFAULT_PROJECT_ID
    if public and not can(principal, Action.READ, row.project_id):
        # Everyone's to read, not to change: visible, so a refusal and not a 404.
        if action is not Action.READ:
            raise Forbidden(principal.name, principal.role.value, action.value, f"{kind} {name!r}")
        return row
    authorize(principal, action, kind, name, row.project_id)
    return row
