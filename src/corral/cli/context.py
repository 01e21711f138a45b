"""Opening the state directory for one command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from corral.compute.context import Corral


@contextmanager
def open_corral() -> Iterator[Corral]:
    """The :class:`Corral` of ``$CORRAL_HOME`` (or the default), closed afterwards."""
    ctx = Corral()
    try:
        yield ctx
    finally:
        ctx.close()
