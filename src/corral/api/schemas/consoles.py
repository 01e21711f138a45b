"""Wire types of the consoles: a VNC ticket."""

from __future__ import annotations

from pydantic import Field

from corral.api.schemas.base import Read


class VncTicketRead(Read):
    """A single-use ticket that opens ``GET /vms/{name}/vnc?token=...`` (a websocket)."""

    token: str = Field(description="The ticket; shown once, valid once.")
    vm: str = Field(description="The VM whose display it opens.")
    expires_in: float = Field(description="Seconds from now during which it may be used.")
    path: str = Field(description="The websocket's path, with the ticket as its query.")
