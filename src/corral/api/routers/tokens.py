"""``/tokens``: API tokens, answered once with their secret and then only by their first
characters.

A user makes, lists and revokes its own tokens; an admin anyone's. To anyone else another
user's token does not exist (404). A token is named by its id or enough of its first digits
(never by the token itself: a secret does not belong in a path). Revoking keeps the token's
record, marked revoked.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from corral.access.principal import Principal
from corral.access.tokens import TokenView
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead, Page
from corral.api.schemas.access import NewTokenRead, TokenCreate, TokenRead
from corral.errors import InvalidInput, NotFound

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=ERRORS)

TokenId = Annotated[
    str,
    Path(max_length=255, description="The token's id, or its first 4 or more hex digits."),
]


def token_read(view: TokenView) -> TokenRead:
    """The wire form of a token view (never the token)."""
    return TokenRead.model_validate(view.as_dict())


def _ref(token_id: str) -> str:
    """The id digits of a path's ``token_id``.

    :raise NotFound: it gives none: no token has that id.
    """
    from corral.access.checks import token_id_of

    digits = token_id_of(token_id)
    if digits is None or digits != token_id:
        raise NotFound("token", token_id[:64])
    return digits


def _owner(principal: Principal, user: str | None) -> str:
    """Whose token a create makes: the user named, else the caller.

    :raise InvalidInput: none is named and the caller has no user record (field ``user``).
    """
    if user is not None:
        return user
    if principal.user_id is None:
        raise InvalidInput("user", f"{principal.name} is no user: name the token's user")
    return principal.name


@router.get("", responses=NOT_FOUND)
def list_tokens(
    ctx: CorralDep,
    principal: PrincipalDep,
    user: Annotated[
        str | None, Query(max_length=255, description="Only this user's tokens.")
    ] = None,
    state: Annotated[
        Literal["active", "expired", "revoked"] | None, Query(description="Only these.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TokenRead]:
    """Tokens, newest first: the caller's own (every user's, for an admin); 404 for
    another user's when the caller is no admin."""
    from corral.access.tokens import list_tokens as do_list

    views = [v for v in do_list(ctx, principal, user) if state is None or v.state == state]
    return page([token_read(v) for v in views], limit, offset)


@router.post(
    "",
    status_code=201,
    responses={404: {"model": ErrorRead, "description": "No such user (or not the caller)."}},
)
def create_token(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: TokenCreate,
) -> NewTokenRead:
    """Make a token, the caller's own unless a user is named (an admin makes anyone's).
    The answer holds the token: this once, for corral keeps only its hash."""
    from corral.access.checks import lifetime
    from corral.access.tokens import create_token as do_create

    expires_in = lifetime(body.expires)
    new = do_create(ctx, principal, _owner(principal, body.user), body.name, expires_in)
    response.headers["Location"] = request.url_for("get_token", token_id=new.view.id).path
    return NewTokenRead.model_validate({**new.view.as_dict(), "token": new.secret})


@router.get("/{token_id}", responses=NOT_FOUND)
def get_token(ctx: CorralDep, principal: PrincipalDep, token_id: TokenId) -> TokenRead:
    """One token (never the token itself: its first characters). 422 when the digits given
    start several tokens' ids."""
    from corral.access.tokens import get_token as do_get

    return token_read(do_get(ctx, principal, _ref(token_id)))


@router.delete("/{token_id}", responses=NOT_FOUND)
def revoke_token(ctx: CorralDep, principal: PrincipalDep, token_id: TokenId) -> TokenRead:
    """Revoke a token: it is refused from now on, and kept, marked revoked; revoking it
    again changes nothing."""
    from corral.access.tokens import revoke_token as do_revoke

    return token_read(do_revoke(ctx, principal, _ref(token_id)))
