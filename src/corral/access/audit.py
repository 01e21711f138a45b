"""The audit log: who did what to which object, and how it ended.

Every operation that changes users, projects, memberships, quotas or tokens runs inside
:func:`audited`. A success is recorded in the same transaction as the change (no change is
ever committed without its entry, and no entry without its change); a refusal is recorded in
a transaction of its own after the change was rolled back, with the error's class as its
outcome. Entries are never updated or deleted by corral.

Only admins read the log: it names every project's objects and users.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from corral.access.checks import MAX_PAGE, check_page
from corral.access.principal import Principal, require_admin
from corral.errors import CorralError, InvalidInput
from corral.store.models import AuditRow, as_utc, utcnow

if TYPE_CHECKING:
    from corral.compute.context import Corral

#: Outcome of an operation that succeeded.
OK = "ok"
#: Most entries one :func:`list_entries` returns.
MAX_LIMIT = MAX_PAGE


@dataclass(frozen=True)
class AuditEntry:
    """One entry, as listings present it."""

    id: int
    at: str
    actor: str
    action: str
    target_kind: str
    target_name: str
    project: str | None
    outcome: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to list; every field left ``None`` matches everything."""

    actor: str | None = None
    #: An exact action (``user.create``) or a kind followed by a dot (``user.``).
    action: str | None = None
    target_kind: str | None = None
    target_name: str | None = None
    project: str | None = None
    outcome: str | None = None
    #: Entries at or after this moment.
    since: datetime | None = None


@dataclass
class Audited:
    """What :func:`audited` hands to the operation: its session and what to record."""

    #: The transaction the change and its entry share.
    session: Session
    #: The object's name (an operation may learn it only inside, a token's id).
    target_name: str
    #: The object's project, if any.
    project: str | None
    #: Added to the entry's detail; never a secret.
    detail: dict[str, Any] = field(default_factory=dict)


def _fit(text: str, column: InstrumentedAttribute[Any]) -> str:
    """``text`` as ``column`` takes it: cut to its length, without NUL characters.

    What was refused gets recorded too, and a refused name may be as long or as strange as a
    client made it: PostgreSQL would refuse to store it, and the refusal would hide the first.
    """
    length: int = column.property.columns[0].type.length
    return text.replace("\x00", "\\0")[:length]


def record(
    session: Session,
    actor: str,
    action: str,
    target_kind: str,
    target_name: str,
    project: str | None,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
) -> AuditRow:
    """Add one entry to the log, in ``session``'s transaction.

    :param actor: a user's name or ``local:<uid>``.
    :param action: ``<kind>.<verb>``: ``project.create``.
    :param outcome: :data:`OK` or the class name of the error that refused the operation.
    :param detail: JSON-serialisable facts (values that are not are written as text).
    :return: the new row (flushed: its id is known). Texts longer than their columns are cut.
    """
    row = AuditRow(
        at=utcnow(),
        actor=_fit(actor, AuditRow.actor),
        action=_fit(action, AuditRow.action),
        target_kind=_fit(target_kind, AuditRow.target_kind),
        target_name=_fit(target_name, AuditRow.target_name),
        project=None if project is None else _fit(project, AuditRow.project),
        outcome=_fit(outcome, AuditRow.outcome),
        detail=json.dumps(dict(detail or {}), sort_keys=True, default=str),
    )
    session.add(row)
    session.flush()
    return row


class AuditedOperation:
    """The context manager :func:`audited` returns; it never swallows an exception."""

    def __init__(
        self,
        ctx: Corral,
        actor: Principal,
        action: str,
        target_kind: str,
        target_name: str,
        project: str | None,
        detail: Mapping[str, Any] | None,
    ) -> None:
        self._ctx = ctx
        self._actor = actor
        self._action = action
        self._kind = target_kind
        self._name = target_name
        self._project = project
        self._detail = dict(detail or {})
        self._stack = ExitStack()
        self._scope: Audited | None = None

    def __enter__(self) -> Audited:
        session = self._stack.enter_context(self._ctx.db.session())
        self._scope = Audited(session, self._name, self._project, dict(self._detail))
        return self._scope

    def _record(self, session: Session, outcome: str, detail: Mapping[str, Any]) -> None:
        scope = self._scope
        name = self._name if scope is None else scope.target_name
        project = self._project if scope is None else scope.project
        record(session, self._actor.name, self._action, self._kind, name, project, outcome, detail)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        assert scope is not None, "entered"
        if exc is None:
            try:
                self._record(scope.session, OK, scope.detail)
            except BaseException as failed:
                self._stack.__exit__(type(failed), failed, failed.__traceback__)
                raise
            self._stack.close()  # commits the change with its entry
            return
        self._stack.__exit__(exc_type, exc, tb)  # rolls the change back
        if isinstance(exc, CorralError):
            with self._ctx.db.session() as session:
                self._record(session, type(exc).__name__, {**scope.detail, "error": exc.message})


def audited(
    ctx: Corral,
    actor: Principal,
    action: str,
    target_kind: str,
    target_name: str,
    project: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditedOperation:
    """A transaction for one operation, recorded in the log however it ends::

        with audited(ctx, actor, "project.create", "project", name) as op:
            op.session.add(...)

    On success the entry joins the operation's transaction; a :class:`CorralError` is
    recorded (its class as the outcome, its message in the detail) in a transaction of its
    own, after the operation's was rolled back, and propagates. Other exceptions are not
    corral's refusals but failures of corral itself: they propagate unrecorded.

    :param actor: who does it.
    :param action: ``<kind>.<verb>``.
    :param detail: facts to record, never a secret; the operation may add to them.
    """
    return AuditedOperation(ctx, actor, action, target_kind, target_name, project, detail)


def _view(row: AuditRow) -> AuditEntry:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = {"text": row.detail}
    return AuditEntry(
        id=row.id,
        at=as_utc(row.at).isoformat(),
        actor=row.actor,
        action=row.action,
        target_kind=row.target_kind,
        target_name=row.target_name,
        project=row.project,
        outcome=row.outcome,
        detail=detail if isinstance(detail, dict) else {"value": detail},
    )


def _where(f: AuditFilter) -> list[ColumnElement[bool]]:
    """The ``WHERE`` clauses of ``f``.

    :raise InvalidInput: ``since`` is out of range once moved to UTC.
    """
    clauses: list[ColumnElement[bool]] = []
    exact = {
        AuditRow.actor: f.actor,
        AuditRow.target_kind: f.target_kind,
        AuditRow.target_name: f.target_name,
        AuditRow.project: f.project,
        AuditRow.outcome: f.outcome,
    }
    for column, value in exact.items():
        if value is not None:
            clauses.append(column == value)
    if f.action is not None:
        if f.action.endswith("."):
            clauses.append(AuditRow.action.startswith(f.action, autoescape=True))
        else:
            clauses.append(AuditRow.action == f.action)
    if f.since is not None:
        try:
            since = as_utc(f.since).astimezone(UTC)
        except OverflowError:
            raise InvalidInput("since", "out of range in UTC") from None
        clauses.append(AuditRow.at >= since)
    return clauses


def _matches_nothing(f: AuditFilter) -> bool:
    """Whether a text of ``f`` holds a NUL: nothing recorded does (:func:`record` writes
    it as ``\\0``), and PostgreSQL refuses one in a query."""
    texts = (f.actor, f.action, f.target_kind, f.target_name, f.project, f.outcome)
    return any(text is not None and "\x00" in text for text in texts)


def page_entries(
    ctx: Corral,
    principal: Principal,
    filters: AuditFilter | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEntry], int]:
    """Entries of the log, newest first, and how many match over all pages.

    :param principal: who asks; only an admin reads the log.
    :param limit: at most this many entries (1 to :data:`MAX_LIMIT`).
    :param offset: skip this many of the newest entries first.
    :raise Forbidden: ``principal`` is not an admin.
    :raise InvalidInput: ``limit`` or ``offset`` is out of range.
    """
    require_admin(principal, "the audit log")
    check_page(limit, offset)
    f = filters or AuditFilter()
    if _matches_nothing(f):
        return [], 0
    where = _where(f)
    query = select(AuditRow).where(*where).order_by(AuditRow.id.desc())
    counting = select(func.count()).select_from(AuditRow).where(*where)
    with ctx.db.session() as session:
        rows = list(session.scalars(query.limit(limit).offset(offset)))
        total = session.scalar(counting) or 0
    return [_view(row) for row in rows], total


def list_entries(
    ctx: Corral,
    principal: Principal,
    filters: AuditFilter | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[AuditEntry]:
    """Entries of the log, newest first (:func:`page_entries` without the count).

    :raise Forbidden: ``principal`` is not an admin.
    :raise InvalidInput: ``limit`` or ``offset`` is out of range.
    """
    return page_entries(ctx, principal, filters, limit, offset)[0]
