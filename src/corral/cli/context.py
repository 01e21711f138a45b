"""What one command talks to: the API (:func:`open_client`), or the state directory itself
(:func:`open_corral`, for the host tools that run where the state is)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from corral.compute.context import Corral

if TYPE_CHECKING:
    from corral.client.api import Client


@contextmanager
def open_corral() -> Iterator[Corral]:
    """The :class:`Corral` of ``$CORRAL_HOME`` (or the default), closed afterwards."""
    ctx = Corral()
    try:
        yield ctx
    finally:
        ctx.close()


@contextmanager
def open_client() -> Iterator[Client]:
    """A client of the daemon this command talks to, closed afterwards.

    ``$CORRAL_URL``/``$CORRAL_TOKEN`` or a saved ``corral login`` name a remote daemon;
    otherwise it is the local one of ``$CORRAL_HOME``, started when none answers
    (see :mod:`corral.client.credentials`).
    """
    from corral.client.api import Client
    from corral.client.credentials import load
    from corral.client.local import connect
    from corral.config import load_home

    login = load()
    client = Client(url=login.url, token=login.token) if login else connect(load_home().root)
    try:
        yield client
    finally:
        client.close()
