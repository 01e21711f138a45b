"""The local administrator: trusted by who it is on this host, as Incus trusts its UNIX socket.

The owner of the state directory, and root, are admins without a user record, a password or
a token: on the daemon's UNIX socket by the peer credentials (``SO_PEERCRED``) of the
connection, and for the CLI that works on the state directory directly by its own uid. So a
fresh state directory needs no bootstrap step: its owner can create projects and users at
once. Over TCP there is no such trust; every request needs a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.access.principal import Principal, Role
from corral.errors import Unauthenticated

if TYPE_CHECKING:
    from corral.compute.context import Corral

#: How the local administrator appears as an actor: ``local:<uid>``.
LOCAL_ACTOR = "local:{uid}"


def local_principal(ctx: Corral, uid: int) -> Principal:
    """The principal of the local user ``uid``: an admin if it is root or owns the state
    directory.

    :param uid: the caller's uid: ``os.getuid()`` for the CLI, the socket peer's for the daemon.
    :raise Unauthenticated: ``uid`` is another user's (it needs a token).
    """
    owner = ctx.home.root.stat().st_uid
    if uid not in (0, owner):
        raise Unauthenticated(
            f"local uid {uid} is neither root nor the owner of {ctx.home.root} (uid {owner}); "
            "use an API token",
            disclose=True,
        )
    return Principal(name=LOCAL_ACTOR.format(uid=uid), role=Role.ADMIN, is_local=True)
