"""``/login`` and ``/whoami``: a token for a user name and password, and who a request
stands for.

``POST /login`` is the one operation that takes no token: it checks a password once and
answers a new token (which expires) for the requests that follow, as ``corral login`` keeps
it. An unknown user, a user without a password, a wrong password and a disabled user are
answered alike (401), after the same work; the audit log says which it was.
"""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import INVALID, UNAUTHENTICATED
from corral.api.schemas.access import LoginCreate, NewTokenRead, WhoamiRead

router = APIRouter(prefix="", tags=["login"])


@router.post("/login", status_code=201, responses={**UNAUTHENTICATED, **INVALID})
def login(ctx: CorralDep, body: LoginCreate) -> NewTokenRead:
    """A new token for the user, if the password is its password: answered this once,
    for corral keeps only its hash. It expires after ``expires`` (30 days unless asked)."""
    from corral.access.checks import lifetime
    from corral.access.tokens import login as do_login

    new = do_login(ctx, body.user, body.password, lifetime(body.expires))
    return NewTokenRead.model_validate({**new.view.as_dict(), "token": new.secret})


@router.get("/whoami", responses=UNAUTHENTICATED)
def whoami(ctx: CorralDep, principal: PrincipalDep) -> WhoamiRead:
    """Who the request stands for: its user and role, and the projects it sees."""
    from corral.access.projects import list_projects

    return WhoamiRead(
        name=principal.name,
        role=principal.role.value,
        local=principal.is_local,
        projects=[p.name for p in list_projects(ctx, principal)],
    )
