"""Wire types of a VM's USB devices."""

from __future__ import annotations

from pydantic import Field

from corral.api.schemas.base import Create, Read


class UsbCreate(Create):
    """``POST /vms/{name}/usb``: the device to add."""

    device: str = Field(
        min_length=1,
        max_length=32,
        description=(
            "usb-tablet, usb-kbd, usb-storage or usb-host (host passthrough: admins only, "
            "for devices in host_allow of corral.toml's [usb] section)."
        ),
        examples=["usb-tablet"],
    )
    volume: str | None = Field(
        default=None,
        max_length=63,
        description="For usb-storage: a detached volume of the VM's project.",
        examples=["data"],
    )
    host: str | None = Field(
        default=None,
        max_length=9,
        description="For usb-host: the host device as vendor:product in lower-case hex.",
        examples=["046d:c52b"],
    )


class UsbRead(Read):
    """One USB device of a VM."""

    id: str = Field(
        description="Its stable id: the kind and a token (usb-storage: the volume's device id)."
    )
    device: str
    volume: str | None = Field(default=None, description="The volume of a usb-storage device.")
    host: str | None = Field(
        default=None, description="The host device of a usb-host device (vendor:product)."
    )


class HostUsbRead(Read):
    """One USB device of the host, as sysfs lists it."""

    address: str = Field(description="Its place on the host's bus (sysfs name, 1-1.4).")
    id: str = Field(description="vendor:product in lower-case hex, as lsusb shows it.")
    manufacturer: str | None = None
    product: str | None = None
    allowed: bool = Field(
        description="Whether it is in host_allow of corral.toml's [usb] section (passthrough)."
    )
