"""``/projects``: projects, their members and quotas.

A user reads the projects it is a member of; another project answers 404, as one that does
not exist. Creating, changing and deleting projects, their members and their quotas is an
admin's: a member who asks is answered 403. Every change is recorded in the audit log.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from corral.access.principal import Principal
from corral.access.projects import ProjectView
from corral.access.quotas import QuotaView
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.routers.users import CHANGE, UserName
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead, Page
from corral.api.schemas.access import (
    FORBIDDEN,
    MembershipRead,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
    QuotaPut,
    QuotaRead,
    QuotaUpdate,
)
from corral.compute.context import Corral

router = APIRouter(prefix="/projects", tags=["projects"], responses=ERRORS)

ProjectName = Annotated[str, Path(max_length=255, description="The project's name.")]


def project_read(view: ProjectView) -> ProjectRead:
    """The wire form of a project view."""
    return ProjectRead.model_validate(view.as_dict())


def quota_read(view: QuotaView) -> QuotaRead:
    """The wire form of a quota view."""
    return QuotaRead.model_validate(view.as_dict())


@router.get("")
def list_projects(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: Annotated[
        str | None, Query(max_length=63, description="Only names that contain this.")
    ] = None,
    member: Annotated[
        str | None, Query(max_length=63, description="Only projects this user is a member of.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[ProjectRead]:
    """The projects the caller is a member of (every one, for an admin), by name."""
    from corral.access.projects import list_projects as do_list

    views = [
        v
        for v in do_list(ctx, principal)
        if (name is None or name in v.name) and (member is None or member in v.members)
    ]
    return page([project_read(v) for v in views], limit, offset)


@router.post(
    "",
    status_code=201,
    responses={
        **FORBIDDEN,
        409: {"model": ErrorRead, "description": "A project has that name."},
    },
)
def create_project(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: ProjectCreate,
) -> ProjectRead:
    """Create a project, without members and without quotas (an admin's)."""
    from corral.access.projects import create_project as do_create

    view = do_create(ctx, principal, body.name, body.description)
    response.headers["Location"] = request.url_for("get_project", name=view.name).path
    return project_read(view)


@router.get("/{name}", responses=NOT_FOUND)
def get_project(ctx: CorralDep, principal: PrincipalDep, name: ProjectName) -> ProjectRead:
    """One project, with its members and how many objects it owns."""
    from corral.access.projects import get_project as do_get

    return project_read(do_get(ctx, principal, name))


@router.patch("/{name}", responses=CHANGE)
def update_project(
    ctx: CorralDep, principal: PrincipalDep, name: ProjectName, body: ProjectUpdate
) -> ProjectRead:
    """Change a project's description (an admin's)."""
    from corral.access.projects import update_project as do_update

    return project_read(do_update(ctx, principal, name, body.description))


@router.delete(
    "/{name}",
    status_code=204,
    responses={
        **CHANGE,
        409: {"model": ErrorRead, "description": "It still owns objects (the first are named)."},
    },
)
def delete_project(ctx: CorralDep, principal: PrincipalDep, name: ProjectName) -> None:
    """Delete a project that owns nothing, with its memberships and quota (an admin's).
    The project ``default`` is never deleted (422)."""
    from corral.access.projects import delete_project as do_delete
    from corral.access.projects import get_project as do_get

    do_get(ctx, principal, name)  # another project is not found, before it is forbidden
    do_delete(ctx, principal, name)


def _membership(
    ctx: Corral, principal: Principal, name: str, user: str, member: bool, changed: bool
) -> MembershipRead:
    """What a membership is after a change: the user's role, whether it is a member now."""
    from corral.access.users import get_user

    role = get_user(ctx, principal, user).role
    return MembershipRead.model_validate(
        {"project": name, "user": user, "role": role, "member": member, "changed": changed}
    )


@router.put("/{name}/members/{user}", responses=CHANGE)
def add_member(
    ctx: CorralDep, principal: PrincipalDep, name: ProjectName, user: UserName
) -> MembershipRead:
    """Make a user a member of a project (an admin's); already one, nothing changes."""
    from corral.access.projects import add_member as do_add
    from corral.access.projects import get_project as do_get

    do_get(ctx, principal, name)
    added = do_add(ctx, principal, name, user)
    return _membership(ctx, principal, name, user, True, added)


@router.delete("/{name}/members/{user}", responses=CHANGE)
def remove_member(
    ctx: CorralDep, principal: PrincipalDep, name: ProjectName, user: UserName
) -> MembershipRead:
    """Take a user out of a project (an admin's); its objects stay in the project."""
    from corral.access.projects import get_project as do_get
    from corral.access.projects import remove_member as do_remove

    do_get(ctx, principal, name)
    removed = do_remove(ctx, principal, name, user)
    return _membership(ctx, principal, name, user, False, removed)


@router.get("/{name}/quota", responses=NOT_FOUND)
def get_quota(ctx: CorralDep, principal: PrincipalDep, name: ProjectName) -> QuotaRead:
    """A project's limits beside what it uses now; its members may read them."""
    from corral.access.quotas import get_quota as do_get

    return quota_read(do_get(ctx, principal, name))


@router.put("/{name}/quota", responses=CHANGE)
def put_quota(
    ctx: CorralDep, principal: PrincipalDep, name: ProjectName, body: QuotaPut
) -> QuotaRead:
    """Set every limit of a project (an admin's); one left out is unlimited, so ``{}``
    lifts them all. A limit below the usage refuses new objects and keeps the others."""
    from corral.access.projects import get_project as do_get
    from corral.access.quotas import set_quota

    do_get(ctx, principal, name)
    return quota_read(set_quota(ctx, principal, name, body.model_dump()))


@router.patch("/{name}/quota", responses=CHANGE)
def update_quota(
    ctx: CorralDep, principal: PrincipalDep, name: ProjectName, body: QuotaUpdate
) -> QuotaRead:
    """Change the limits given (``null``: unlimited); the others stay (an admin's)."""
    from corral.access.projects import get_project as do_get
    from corral.access.quotas import set_quota

    do_get(ctx, principal, name)
    return quota_read(set_quota(ctx, principal, name, body.model_dump(exclude_unset=True)))
