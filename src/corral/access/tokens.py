"""API tokens: bearer secrets for the REST API, shown once and kept only as a hash.

A token reads ``crl_<id>_<secret>``: ``<id>`` is 16 hex digits that find its row, ``<secret>``
is ``secrets.token_urlsafe(32)`` (256 random bits). corral keeps the SHA-256 of the whole
token, never the token: a fast hash is enough for 256 random bits (nothing to guess, unlike a
password), and it keeps the check cheap for every request. The check compares hashes in
constant time (:func:`hmac.compare_digest`).

A token is refused once revoked, once expired, and while its user is disabled; a refusal
never says which (:class:`~corral.errors.Unauthenticated`). Its ``last_used_at`` is written at
most once a minute, to spare the database a write per request.

A user creates, lists and revokes its own tokens; an admin anyone's. To anyone else another
user's token does not exist (:class:`~corral.errors.NotFound`). A user with a password also
gets a token by :func:`login`: the password is checked once, and the token (which expires)
signs the requests that follow.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.access import checks
from corral.access.audit import audited, record
from corral.access.checks import (
    LOGIN_TOKEN_NAME,
    TOKEN_PREFIX,
    check_lifetime,
    check_token_name,
    check_token_ref,
    token_id_of,
)
from corral.access.principal import Principal
from corral.access.users import authenticate_password, find_user, principal_of
from corral.errors import InvalidInput, NotFound, Unauthenticated
from corral.store.models import TOKEN_ID_LENGTH, TokenRow, UserRow, as_utc, utcnow

if TYPE_CHECKING:
    from corral.compute.context import Corral

#: A whole token (to match with ``fullmatch``): the prefix, the id, the secret.
TOKEN_PATTERN = re.compile(rf"{TOKEN_PREFIX}([0-9a-f]{{{TOKEN_ID_LENGTH}}})_[A-Za-z0-9_-]{{43}}")
#: How many characters of a token are kept to show it: the prefix and 8 of the id's digits.
DISPLAY_LENGTH = len(TOKEN_PREFIX) + 8
#: ``last_used_at`` is written when it is older than this.
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: How long a token made by :func:`login` lasts, unless asked otherwise.
LOGIN_LIFETIME = timedelta(days=30)
#: ``30d`` -> 30 days (:func:`corral.access.checks.parse_duration`, where the rules live).
parse_duration = checks.parse_duration


@dataclass(frozen=True)
class TokenView:
    """A token as listings present it: never the token, only its first characters."""

    id: str
    user: str
    name: str
    #: ``crl_`` and the id's first digits.
    prefix: str
    created_at: str
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None
    #: ``active``, ``expired`` or ``revoked``.
    state: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NewToken:
    """A token just made: the only time :attr:`secret` is known."""

    view: TokenView
    #: The whole token, ``crl_<id>_<secret>``; not kept by corral.
    secret: str


def hash_token(token: str) -> str:
    """The SHA-256 of ``token`` in hex: what is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _state(row: TokenRow, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and as_utc(row.expires_at) <= now:
        return "expired"
    return "active"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def _view(row: TokenRow, user: str) -> TokenView:
    return TokenView(
        id=row.id,
        user=user,
        name=row.name,
        prefix=row.prefix,
        created_at=as_utc(row.created_at).isoformat(),
        last_used_at=_iso(row.last_used_at),
        expires_at=_iso(row.expires_at),
        revoked_at=_iso(row.revoked_at),
        state=_state(row, utcnow()),
    )


def create_token(
    ctx: Corral,
    actor: Principal,
    user: str,
    name: str = "default",
    expires_in: timedelta | None = None,
) -> NewToken:
    """Make a token for ``user``; its secret is returned here and never again.

    :param name: what it is for (``ci``, ``laptop``); names need not be unique.
    :param expires_in: its lifetime; ``None``: it lasts until revoked.
    :raise NotFound: no such user, or another user's and ``actor`` is not an admin.
    :raise InvalidInput: a bad name or lifetime (field ``name``, ``expires``).
    """
    detail: dict[str, Any] = {"name": name}
    if expires_in is not None:
        detail["expires_in_s"] = int(expires_in.total_seconds())
    with audited(ctx, actor, "token.create", "user", user, detail=detail) as op:
        check_token_name(name)
        check_lifetime(expires_in)
        owner = find_user(op.session, actor, user)
        token_id = secrets.token_hex(TOKEN_ID_LENGTH // 2)
        secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        row = TokenRow(
            id=token_id,
            user_id=owner.id,
            name=name,
            secret_hash=hash_token(secret),
            prefix=secret[:DISPLAY_LENGTH],
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
        )
        op.session.add(row)
        op.session.flush()
        op.detail["token_id"] = token_id
        return NewToken(_view(row, owner.name), secret)


def list_tokens(ctx: Corral, actor: Principal, user: str | None = None) -> list[TokenView]:
    """Tokens, newest first: every user's for an admin, ``actor``'s own otherwise.

    :param user: only this user's tokens.
    :raise NotFound: ``user`` does not exist, or is another user and ``actor`` no admin.
    """
    query = select(TokenRow, UserRow.name).join(UserRow, UserRow.id == TokenRow.user_id)
    with ctx.db.session() as session:
        if user is not None:
            query = query.where(TokenRow.user_id == find_user(session, actor, user).id)
        elif not actor.is_admin:
            query = query.where(TokenRow.user_id == (actor.user_id or ""))
        rows = session.execute(query.order_by(TokenRow.created_at.desc(), TokenRow.id))
        return [_view(row, owner) for row, owner in rows]


def _find_token(session: Session, actor: Principal, ref: str) -> tuple[TokenRow, UserRow]:
    """The token ``ref`` names: its id, the start of it, its shown prefix or the whole token.

    :raise NotFound: none of ``actor``'s tokens (any token, for an admin) matches.
    :raise InvalidInput: more than one does (field ``id``).
    """
    digits = check_token_ref(ref)
    query = (
        select(TokenRow, UserRow)
        .join(UserRow, UserRow.id == TokenRow.user_id)
        .where(TokenRow.id.startswith(digits, autoescape=True))
        .limit(2)
    )
    if not actor.is_admin:
        query = query.where(TokenRow.user_id == (actor.user_id or ""))
    found = session.execute(query).all()
    if not found:
        raise NotFound("token", digits)
    if len(found) > 1:
        raise InvalidInput("id", f"{digits!r} starts several tokens' ids; give more digits")
    return found[0]


def get_token(ctx: Corral, actor: Principal, ref: str) -> TokenView:
    """The token ``ref`` names (its id, or enough of its first digits).

    :raise NotFound: no such token, or another user's and ``actor`` is not an admin.
    :raise InvalidInput: ``ref`` is no id, or the start of several tokens' ids.
    """
    with ctx.db.session() as session:
        row, owner = _find_token(session, actor, ref)
        return _view(row, owner.name)


def revoke_token(ctx: Corral, actor: Principal, ref: str) -> TokenView:
    """Revoke a token: it is refused from now on; revoking it again changes nothing.

    :param ref: its id as ``token list`` shows it (or enough of its first digits), its
        display prefix (``crl_1a2b3c4d``), or the whole token (to revoke a leaked one).
    :raise NotFound: no such token, or another user's and ``actor`` is not an admin.
    :raise InvalidInput: ``ref`` is the start of several tokens' ids.
    """
    # Never the whole reference in the log or a message: it may be the whole token.
    shown = token_id_of(ref) or "?"
    with audited(ctx, actor, "token.revoke", "token", shown) as op:
        row, owner = _find_token(op.session, actor, ref)
        op.target_name = row.id
        op.detail["user"] = owner.name
        op.detail["changed"] = row.revoked_at is None
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            op.session.flush()
        return _view(row, owner.name)


def authenticate_token(ctx: Corral, token: str) -> Principal:
    """The principal ``token`` stands for, with the user's role and projects as they are now.

    :raise Unauthenticated: the token is malformed, unknown, wrong, revoked or expired, or
        its user is disabled; the error's ``reason`` says which, its message does not.
    """
    match = TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise Unauthenticated("not a corral token")
    now = utcnow()
    with ctx.db.session() as session:
        found = session.execute(
            select(TokenRow, UserRow).join(UserRow).where(TokenRow.id == match[1])
        ).first()
        if found is None:
            # Knowing that an id exists does not help guessing its 256-bit secret.
            raise Unauthenticated("unknown token id")
        row, user = found
        if not hmac.compare_digest(row.secret_hash, hash_token(token)):
            raise Unauthenticated(f"wrong secret for token {row.id}")
        state = _state(row, now)
        if state != "active":
            raise Unauthenticated(f"token {row.id} is {state}")
        if user.disabled:
            raise Unauthenticated(f"user {user.name!r} is disabled")
        last = None if row.last_used_at is None else as_utc(row.last_used_at)
        if last is None or now - last >= LAST_USED_RESOLUTION:
            row.last_used_at = now
        return principal_of(session, user)


def login(
    ctx: Corral, name: str, password: str, expires_in: timedelta | None = LOGIN_LIFETIME
) -> NewToken:
    """A new token for user ``name``, if ``password`` is its password: what ``corral login``
    keeps. The token is the user's own (it creates it, as ``token.create`` records) and is
    named :data:`~corral.access.checks.LOGIN_TOKEN_NAME`.

    A refusal is recorded in the audit log as ``user.login`` with its reason, which the
    error's message does not give.

    :param expires_in: the token's lifetime; ``None``: until revoked.
    :raise Unauthenticated: no such user, no password, a wrong password, or a disabled user
        (all alike).
    :raise InvalidInput: a bad lifetime (field ``expires``).
    """
    check_lifetime(expires_in)
    try:
        principal = authenticate_password(ctx, name, password)
    except Unauthenticated as exc:
        with ctx.db.session() as session:
            record(
                session,
                name,
                "user.login",
                "user",
                name,
                None,
                type(exc).__name__,
                {"error": exc.reason},
            )
        raise
    return create_token(ctx, principal, principal.name, LOGIN_TOKEN_NAME, expires_in)
