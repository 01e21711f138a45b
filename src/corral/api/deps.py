"""Dependencies the endpoints take: the state directory, opened once per process."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from corral.compute.context import Corral


def get_corral(request: Request) -> Corral:
    """The daemon's :class:`Corral` (made by the app factory)."""
    ctx: Corral = request.app.state.corral
    return ctx


CorralDep = Annotated[Corral, Depends(get_corral)]
