"""``/users``: users of the API, their roles, passwords and memberships.

An admin manages every user; any other user reads itself and changes its own password, and
to it another user does not exist (404). A password is received, never answered: a user
answers only whether it has one. Every change is recorded in the audit log.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from corral.access.users import UserView
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead, Page
from corral.api.schemas.access import FORBIDDEN, Role, UserCreate, UserRead, UserUpdate

router = APIRouter(prefix="/users", tags=["users"], responses=ERRORS)

UserName = Annotated[str, Path(max_length=255, description="The user's name.")]

#: ``responses=`` of a change to a user or project the caller may see (an admin's).
CHANGE = {**NOT_FOUND, **FORBIDDEN}


def user_read(view: UserView) -> UserRead:
    """The wire form of a user view."""
    return UserRead.model_validate(view.as_dict())


@router.get("")
def list_users(
    ctx: CorralDep,
    principal: PrincipalDep,
    role: Annotated[Role | None, Query(description="Only users of this role.")] = None,
    project: Annotated[
        str | None, Query(max_length=63, description="Only members of this project.")
    ] = None,
    disabled: Annotated[
        bool | None, Query(description="Only disabled (true) or enabled (false) users.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[UserRead]:
    """Users by name: every one for an admin, only the caller itself for anyone else."""
    from corral.access.users import list_users as do_list

    views = [
        v
        for v in do_list(ctx, principal)
        if (role is None or v.role == role)
        and (project is None or project in v.projects)
        and (disabled is None or v.disabled == disabled)
    ]
    return page([user_read(v) for v in views], limit, offset)


@router.post(
    "",
    status_code=201,
    responses={
        **FORBIDDEN,
        404: {"model": ErrorRead, "description": "No such project."},
        409: {"model": ErrorRead, "description": "A user has that name."},
    },
)
def create_user(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: UserCreate,
) -> UserRead:
    """Create a user, a member of the projects given (an admin's)."""
    from corral.access.users import create_user as do_create

    view = do_create(ctx, principal, body.name, body.role, body.projects, body.password)
    response.headers["Location"] = request.url_for("get_user", name=view.name).path
    return user_read(view)


@router.get("/{name}", responses=NOT_FOUND)
def get_user(ctx: CorralDep, principal: PrincipalDep, name: UserName) -> UserRead:
    """One user: any for an admin, only itself for anyone else."""
    from corral.access.users import get_user as do_get

    return user_read(do_get(ctx, principal, name))


@router.patch("/{name}", responses=CHANGE)
def update_user(
    ctx: CorralDep, principal: PrincipalDep, name: UserName, body: UserUpdate
) -> UserRead:
    """Change a user's role, ``disabled`` (an admin's) or password (also the user's own;
    ``null`` removes it). The changes are made in that order, each recorded on its own: a
    refused one leaves those after it unmade."""
    from corral.access.users import get_user as do_get
    from corral.access.users import set_disabled, set_password, set_role

    do_get(ctx, principal, name)  # another user is not found, before it is forbidden
    given = body.model_fields_set
    if "role" in given and body.role is not None:
        set_role(ctx, principal, name, body.role)
    if "disabled" in given and body.disabled is not None:
        set_disabled(ctx, principal, name, body.disabled)
    if "password" in given:
        set_password(ctx, principal, name, body.password)
    return user_read(do_get(ctx, principal, name))


@router.delete("/{name}", status_code=204, responses=CHANGE)
def delete_user(ctx: CorralDep, principal: PrincipalDep, name: UserName) -> None:
    """Delete a user with its tokens and memberships (an admin's); what it made stays."""
    from corral.access.users import delete_user as do_delete
    from corral.access.users import get_user as do_get

    do_get(ctx, principal, name)
    do_delete(ctx, principal, name)
