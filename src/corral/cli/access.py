"""What the access commands (``corral project``, ``user``, ``token``, ``audit``) share.

They work on the state directory directly, as its local administrator: the user that owns
it, or root (:func:`corral.access.local.local_principal`). Once ``corrald`` serves the API,
they become its clients and the daemon checks the same rules.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from corral.errors import InvalidInput

if TYPE_CHECKING:
    from corral.access.principal import Principal
    from corral.compute.context import Corral


def local_actor(ctx: Corral) -> Principal:
    """The principal this command acts as: the local administrator.

    :raise Unauthenticated: this user is neither root nor the state directory's owner.
    """
    from corral.access.local import local_principal

    return local_principal(ctx, os.getuid())


def when(iso: str | None) -> str:
    """An ISO time as ``2025-01-31 12:00:00`` (UTC), ``-`` for none."""
    return "-" if iso is None else iso[:19].replace("T", " ")


def read_password(field: str = "password-stdin") -> str:
    """The password on standard input: its first line, without the line break.

    :raise InvalidInput: standard input is empty (naming ``field``).
    """
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise InvalidInput(field, "standard input holds no password (give it on one line)")
    return password


#: Printed under a token that was just made.
SHOWN_ONCE = "This token is shown once and corral keeps no copy: store it now."
