"""Wire types of snapshots (of the disks, or with memory): a tree of them per VM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create, Read
from corral.storage.snapshots import MAX_DESCRIPTION, SNAPSHOT_NAME_PATTERN


class SnapshotRead(Read):
    """One snapshot of a VM, a node of the VM's snapshot tree."""

    name: str
    description: str
    kind: Literal["disk", "memory"] = Field(
        description="'disk': the disks only; 'memory': the disks and the guest's RAM and "
        "device state (a revert resumes the guest where it was)."
    )
    parent: str | None = Field(description="The snapshot it was taken after; null for a root.")
    current: bool = Field(description="Whether the VM's disks sit on it now.")
    vm_state: str = Field(description="The VM's state when it was taken.")
    created_at: str
    layers: dict[str, str] = Field(description="The frozen file of each disk, by disk name.")
    memory_file: str | None = Field(
        default=None, description="The saved memory and device state; null for 'disk'."
    )


class SnapshotCreate(Create):
    """A snapshot to take (``POST /vms/{name}/snapshots``)."""

    name: str = Field(
        pattern=SNAPSHOT_NAME_PATTERN,
        description="Unique within the VM: 1-63 of a-z, 0-9, '.', '_', '-'.",
        examples=["before-upgrade"],
    )
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    memory: bool = Field(
        default=False,
        description="Also save the guest's RAM and device state (the VM must be running or "
        "paused; it is paused for the save).",
    )


class SnapshotPreview(Read):
    """What a revert or a delete would do (nothing is changed)."""

    vm: str
    snapshot: str
    steps: list[str] = Field(description="What it does and what is lost, line by line.")
