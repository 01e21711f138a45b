"""Scoping queries of project-owned objects (VMs, images, key pairs) to what a caller sees.

The API layer lists with :func:`visible` in the ``WHERE`` clause and fetches one object with
:func:`find_owned`, so that an object of another project answers exactly as an object that
does not exist: :class:`~corral.errors.NotFound`, with no data.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from corral.access.principal import Action, Principal, authorize, visible_projects
from corral.errors import NotFound
from corral.store.models import ImageRow, KeyPairRow, VmRow

Owned = TypeVar("Owned", VmRow, ImageRow, KeyPairRow)


def visible(principal: Principal, column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """A ``WHERE`` clause on a ``project_id`` column: the rows ``principal`` may read.

    :param column: ``VmRow.project_id``, ``ImageRow.project_id``, ...
    """
    projects = visible_projects(principal)
    return true() if projects is None else column.in_(sorted(projects))


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
    authorize(principal, action, kind, name, row.project_id)
    return row
