"""Wire types of the consoles: a VNC ticket and a VNC password."""

from __future__ import annotations

from pydantic import Field

from corral.api.schemas.base import Create, Read


class VncTicketRead(Read):
    """A single-use ticket that opens ``GET /vms/{name}/vnc?token=...`` (a websocket)."""

    token: str = Field(description="The ticket; shown once, valid once.")
    vm: str = Field(description="The VM whose display it opens.")
    expires_in: float = Field(description="Seconds from now during which it may be used.")
    path: str = Field(description="The websocket's path, with the ticket as its query.")


class VncPasswordCreate(Create):
    """A VM's new VNC password (``POST /vms/{name}/vnc/password``).

    It is kept only in a file that only corrald may read, in the VM's own directory, and
    given to QEMU at each start; a running VM gets it at once.
    """

    password: str = Field(
        min_length=1,
        max_length=8,
        description="1 to 8 printable ASCII characters (RFB's DES uses no more).",
    )
    expires: int | None = Field(
        default=None,
        ge=1,
        le=365 * 24 * 3600,
        description="Seconds the password stays valid on the running display (running or "
        "paused VMs only); left out: it does not expire. The next start does without it.",
    )


class VncPasswordRead(Read):
    """What setting or clearing a VM's VNC password did."""

    vm: str = Field(description="The VM.")
    password_auth: bool = Field(description="Its display asks for the password from now on.")
    live: bool = Field(description="The running display got the change at once.")
