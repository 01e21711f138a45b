"""Wire types of a VM's USB devices."""

from __future__ import annotations

from pydantic import Field

from corral.api.schemas.base import Create, Read


class UsbCreate(Create):
    """``POST /vms/{name}/usb``: the device to add."""

    device: str = Field(
        min_length=1,
        max_length=32,
        description="usb-tablet, usb-kbd or usb-storage (host passthrough, usb-host, is refused).",
        examples=["usb-tablet"],
    )
    volume: str | None = Field(
        default=None,
        max_length=63,
        description="For usb-storage: a detached volume of the VM's project.",
        examples=["data"],
    )


class UsbRead(Read):
    """One USB device of a VM."""

    id: str = Field(
        description="Its stable id: the kind and a token (usb-storage: the volume's device id)."
    )
    device: str
    volume: str | None = Field(default=None, description="The volume of a usb-storage device.")
