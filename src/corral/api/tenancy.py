"""Project scoping for the read endpoints: what a principal may see, by name."""

from __future__ import annotations

from sqlalchemy import select

from corral.access.principal import Action, Principal
from corral.access.scope import Owned, find_owned, visible
from corral.compute.context import Corral


def visible_names(ctx: Corral, principal: Principal, model: type[Owned]) -> set[str]:
    """Names of the ``model`` objects in projects ``principal`` may read."""
    with ctx.db.session() as session:
        return set(session.scalars(select(model.name).where(visible(principal, model.project_id))))


def require_visible(
    ctx: Corral,
    principal: Principal,
    model: type[Owned],
    kind: str,
    name: str,
    action: Action = Action.READ,
) -> None:
    """:raise NotFound: no such object, or not in a project ``principal`` may read (the same
    answer, so that another project's objects do not show)."""
    with ctx.db.session() as session:
        find_owned(session, principal, model, kind, name, action)
