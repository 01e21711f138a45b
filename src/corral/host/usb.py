"""The host's USB devices, as the kernel lists them in sysfs (what ``lsusb`` shows).

Each device is a directory of ``/sys/bus/usb/devices`` named by its place on the bus
(``1-1.4``; a hub's root is ``usb1``); its ``idVendor`` and ``idProduct`` hold 4 hex digits,
``manufacturer`` and ``product`` the strings the device reports, when it reports any. The
entries with a colon in their name are a device's interfaces, not devices.

:func:`parse_devices` is the pure reading of those files; :func:`read_devices` gathers them
from sysfs. A host without a USB bus (no such directory) has no devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Where the kernel lists USB devices.
SYSFS_USB: Final = Path("/sys/bus/usb/devices")
#: The attribute files read for each device.
ATTRIBUTES: Final = ("idVendor", "idProduct", "manufacturer", "product")


@dataclass(frozen=True)
class HostUsbDevice:
    """One USB device of the host."""

    #: Its place on the bus: the sysfs entry's name (``1-1.4``).
    address: str
    vendorid: int
    productid: int
    manufacturer: str | None = None
    product: str | None = None

    @property
    def usb_id(self) -> str:
        """``vendor:product`` in lower-case hex, as ``lsusb`` and ``corral.toml`` write it."""
        return f"{self.vendorid:04x}:{self.productid:04x}"


def _hex16(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip(), 16)
    except ValueError:
        return None
    return value if 0 <= value <= 0xFFFF else None


def _text(text: str | None) -> str | None:
    cleaned = "".join(c for c in (text or "").strip() if c.isprintable())
    return cleaned or None


def parse_devices(entries: Mapping[str, Mapping[str, str]]) -> list[HostUsbDevice]:
    """The devices among sysfs ``entries``, ordered by address.

    :param entries: each entry's name and the contents of its attribute files (those that
        exist); interfaces and entries without valid ids are left out.
    """
    devices = []
    for address, files in entries.items():
        if ":" in address:
            continue
        vendor, product = _hex16(files.get("idVendor")), _hex16(files.get("idProduct"))
        if vendor is None or product is None:
            continue
        devices.append(
            HostUsbDevice(
                address,
                vendor,
                product,
                _text(files.get("manufacturer")),
                _text(files.get("product")),
            )
        )
    return sorted(devices, key=lambda d: d.address)


def read_devices(root: Path = SYSFS_USB) -> list[HostUsbDevice]:
    """The host's USB devices, read from sysfs under ``root``."""
    entries: dict[str, dict[str, str]] = {}
    try:
        children = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for child in children:
        files: dict[str, str] = {}
        for name in ATTRIBUTES:
            try:
                files[name] = (child / name).read_text(errors="replace")
            except OSError:
                continue
        entries[child.name] = files
    return parse_devices(entries)
