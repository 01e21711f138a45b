"""Who is asking: the local administrator on the UNIX socket, a token's user over TCP.

The daemon serves each listener through :func:`via`, which marks every request's ASGI scope
with the listener it came in on. The UNIX socket is mode 0600 in the 0700 state directory, so
the kernel lets only its owner and root connect: they are the local administrator, with no
token and no bootstrap step (as Incus trusts its local socket). Any other request (TCP, or an
app served without :func:`via`) must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from corral.access.principal import Principal
from corral.api.deps import CorralDep
from corral.errors import Unauthenticated

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key :func:`via` sets.
LISTENER = "corral.listener"


def via(app: Asgi, listener: Literal["unix", "tcp"]) -> Asgi:
    """``app`` with every request marked as coming in on ``listener``."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        scope[LISTENER] = listener
        await app(scope, receive, send)

    return marked


#: ``Authorization: Bearer <token>``, documented in the OpenAPI document; its absence is
#: answered by :func:`get_principal` (the UNIX socket needs none).
_bearer = HTTPBearer(auto_error=False, description="An API token: `corral token create`.")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_principal(request: Request, ctx: CorralDep, bearer: Bearer) -> Principal:
    """The principal of a request.

    :raise Unauthenticated: a request not on the UNIX socket without a valid bearer token.
    """
    from corral.access.local import local_principal
    from corral.access.tokens import authenticate_token

    if request.scope.get(LISTENER) == "unix":
        return local_principal(ctx, os.geteuid())
    if bearer is None or not bearer.credentials.strip():
        raise Unauthenticated("no bearer token")
    return authenticate_token(ctx, bearer.credentials.strip())


PrincipalDep = Annotated[Principal, Depends(get_principal)]
