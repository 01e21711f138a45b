"""Wire types of cloning a VM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create
from corral.spec.vm import NAME_PATTERN
from corral.storage.snapshots import SNAPSHOT_NAME_PATTERN


class CloneCreate(Create):
    """A clone to make (``POST /vms/{name}/clone``)."""

    name: str = Field(pattern=NAME_PATTERN, description="The new VM's name.", examples=["web2"])
    mode: Literal["linked", "full"] = Field(
        default="linked",
        description="'linked': overlays on the source's frozen layers (instant; the source "
        "and that snapshot cannot be deleted while the clone exists); 'full': a standalone "
        "copy of every disk.",
    )
    snapshot: str | None = Field(
        default=None,
        pattern=SNAPSHOT_NAME_PATTERN,
        description="Clone this snapshot of the source (in any state); without it the "
        "source's disks as they are now (the source must be stopped; a linked clone first "
        "takes the snapshot 'clone-<name>' of it).",
    )
    project: str | None = Field(
        default=None, description="The clone's project; the source's when absent."
    )
    start: bool = Field(default=False, description="Start the clone once it is made.")
