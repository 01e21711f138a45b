"""What the access commands (``corral project``, ``user``, ``token``, ``audit``, ``login``)
share.

They are clients of corrald's API (:func:`corral.cli.context.open_client`): the local daemon
on its UNIX socket, where the state directory's owner is the administrator, or the daemon a
``corral login`` names, where the logged-in user's role and projects hold. The daemon checks
every rule; what can be checked before asking (a duration, a size, a page) is checked here,
with the same messages.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

from corral.api.schemas import Page
from corral.errors import InvalidInput

T = TypeVar("T")

#: Items asked for per request when a command lists everything.
PAGE_SIZE = 1000

#: Printed under a token that was just made.
SHOWN_ONCE = "This token is shown once and corral keeps no copy: store it now."


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


def every(fetch: Callable[[int, int], Page[T]]) -> Iterator[T]:
    """Every item of a listing, a page at a time.

    :param fetch: asks for one page, given its ``limit`` and ``offset``.
    """
    offset = 0
    while True:
        found = fetch(PAGE_SIZE, offset)
        yield from found.items
        offset += len(found.items)
        if not found.items or offset >= found.total:
            return
