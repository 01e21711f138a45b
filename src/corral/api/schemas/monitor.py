"""Wire types of a VM's monitor, its hard reset and its CD-ROM drive."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from corral.api.schemas.base import Create, Read


class MonitorCreate(Create):
    """A command for ``POST /vms/{name}/monitor``: a QMP message or an HMP line, not both."""

    qmp: dict[str, Any] | None = Field(
        default=None,
        description='A QMP message: {"execute": NAME, "arguments": {...}}.',
        examples=[{"execute": "query-status"}],
    )
    hmp: str | None = Field(
        default=None,
        max_length=1000,
        description="An HMP command line, run through human-monitor-command.",
        examples=["info status"],
    )

    @model_validator(mode="after")
    def check_one(self) -> MonitorCreate:
        if (self.qmp is None) == (self.hmp is None):
            raise ValueError("give exactly one of qmp and hmp")
        return self


class MonitorErrorRead(Read):
    """QEMU's refusal of a command."""

    class_: str = Field(alias="class", description="QEMU's error class: GenericError...")
    desc: str


class MonitorRead(Read):
    """QEMU's answer to a command: ``return`` (HMP: its output text) or ``error``."""

    return_: Any = Field(default=None, alias="return")
    error: MonitorErrorRead | None = None


class CdromCreate(Create):
    """``POST /vms/{name}/cdrom``: the ISO to insert."""

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="An ISO 9660 image on the daemon's host (admins only).",
        examples=["/srv/iso/tools.iso"],
    )
    boot: bool = Field(
        default=False, description="Boot from it (firmware boot), from the next start."
    )


class CdromRead(Read):
    """A VM's CD-ROM drive as its spec records it."""

    path: str | None = Field(description="The ISO in the tray; null: empty.")
    boot: bool
