"""``/audit``: the audit log, who did what to which object and how it ended; an admin's to
read, for it names every project's objects and users."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset
from corral.api.schemas import ERRORS, Page
from corral.api.schemas.access import FORBIDDEN, AuditEntryRead
from corral.errors import InvalidInput

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERRORS)

#: A moment in ISO 8601: a date, a time, and an offset if not UTC.
MOMENT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?$"
)


def _moment(text: str) -> datetime:
    """:raise InvalidInput: ``text`` is no moment (field ``since``)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput("since", f"{text!r} is not a moment: {exc}") from None


@router.get("", responses=FORBIDDEN)
def list_entries(
    ctx: CorralDep,
    principal: PrincipalDep,
    actor: Annotated[
        str | None, Query(max_length=80, description="Only what this user (or local:UID) did.")
    ] = None,
    action: Annotated[
        str | None,
        Query(max_length=63, description="Only this action (user.create), or a kind (user.)."),
    ] = None,
    target_kind: Annotated[
        str | None, Query(max_length=32, description="Only actions on this kind of object.")
    ] = None,
    target: Annotated[
        str | None, Query(max_length=255, description="Only actions on the object so named.")
    ] = None,
    project: Annotated[
        str | None, Query(max_length=63, description="Only this project's entries.")
    ] = None,
    outcome: Annotated[
        str | None,
        Query(max_length=63, description="Only this outcome: ok, or an error's class."),
    ] = None,
    since: Annotated[
        str | None,
        Query(
            pattern=MOMENT,
            description="Only entries at or after this moment: 2025-01-31T12:00:00Z (UTC if "
            "no offset is given).",
        ),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEntryRead]:
    """Entries of the audit log, newest first (an admin's)."""
    from corral.access.audit import AuditFilter, page_entries

    filters = AuditFilter(
        actor=actor,
        action=action,
        target_kind=target_kind,
        target_name=target,
        project=project,
        outcome=outcome,
        since=None if since is None else _moment(since),
    )
    entries, total = page_entries(ctx, principal, filters, limit, offset)
    return Page[AuditEntryRead](
        items=[AuditEntryRead.model_validate(e.as_dict()) for e in entries],
        total=total,
        limit=limit,
        offset=offset,
    )
