"""Host-wide settings of one state directory: ``$CORRAL_HOME/corral.toml``.

Every key is optional::

    [launch]
    ssh_port_range = "2200-2999"     # loopback ports forwarded to guests' port 22

    [capacity]
    disk_allocation_ratio = 1.0      # provisioned disk may be this many times the free space
    memory_reserve = "256M"          # memory kept free for the host itself

    [usb]
    host_allow = ["046d:c52b"]       # host USB devices (vendor:product, lower-case hex)
                                     # that admins may pass through to guests; none if unset

    [network]
    host = true                      # make virtual networks on the host (bridges, dnsmasq,
                                     # nftables); false: keep them in the database only
    floating_pool = "203.0.113.0/28" # addresses floating IPs are allocated from (none if unset)
    floating_interface = "eth0"      # where they live (default: the default route's)
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from corral.config import Home
from corral.errors import InvalidInput
from corral.spec.net import IFNAME_PATTERN
from corral.units import MiB, parse_size

SETTINGS_FILE = "corral.toml"


def _memory(value: object) -> object:
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return parse_size(value, "M")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


class LaunchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ssh_port_range: tuple[int, int] = (2200, 2999)

    @field_validator("ssh_port_range", mode="before")
    @classmethod
    def parse_range(cls, value: object) -> object:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
            if not match:
                raise ValueError(f"{value!r} is not a range like 2200-2999")
            return (int(match[1]), int(match[2]))
        return value

    @field_validator("ssh_port_range")
    @classmethod
    def check_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 <= low <= high <= 65535:
            raise ValueError("must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")
        return value


class CapacitySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    disk_allocation_ratio: float = Field(default=1.0, gt=0, le=100)
    memory_reserve: Annotated[int, BeforeValidator(_memory)] = Field(default=256 * MiB, ge=0)


#: A USB device as ``vendor:product``, 4 lower-case hex digits each (as ``lsusb`` shows it).
USB_ID_PATTERN = r"[0-9a-f]{4}:[0-9a-f]{4}"


class UsbSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The host USB devices an admin may pass through to a guest; an empty list allows none.
    host_allow: tuple[str, ...] = ()

    @field_validator("host_allow")
    @classmethod
    def check_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.fullmatch(USB_ID_PATTERN, item):
                raise ValueError(f"{item!r} is not vendor:product in lower-case hex (046d:c52b)")
        return value


class NetworkSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Whether each change of the virtual networks is applied to the host; ``false`` keeps
    #: them in the database only (a host whose networking corral must leave alone).
    host: bool = True
    #: The addresses floating IPs are allocated from (its host addresses, or every address
    #: of a /31 or /32); none when unset.
    floating_pool: ipaddress.IPv4Network | None = None
    #: The interface the floating addresses are added to (the host answers ARP for them
    #: there); the default route's when unset.
    floating_interface: str | None = None

    @field_validator("floating_pool", mode="before")
    @classmethod
    def parse_pool(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return ipaddress.IPv4Network(value.strip())
            except ValueError as exc:
                raise ValueError(
                    f"{value!r} is not an IPv4 network like 203.0.113.0/28 ({exc})"
                ) from None
        return value

    @field_validator("floating_interface")
    @classmethod
    def check_interface(cls, value: str | None) -> str | None:
        if value is not None and (not IFNAME_PATTERN.match(value) or value in (".", "..")):
            raise ValueError(f"{value!r} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -)")
        return value


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    launch: LaunchSettings = LaunchSettings()
    capacity: CapacitySettings = CapacitySettings()
    usb: UsbSettings = UsbSettings()
    network: NetworkSettings = NetworkSettings()


def settings_path(home: Home) -> Path:
    """Where the settings of ``home`` are: ``corral.toml`` in its root."""
    return home.root / SETTINGS_FILE


def load_settings(home: Home) -> Settings:
    """The settings in ``corral.toml``, defaults for what it does not say (or if missing).

    :raise InvalidInput: the file is not valid TOML or has an unknown or bad key; the field
        is named as ``<file>: <section>.<key>``.
    """
    path = settings_path(home)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Settings()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(str(path), f"not valid TOML: {exc}") from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        reason = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInput(f"{Path(path)}: {where}", reason) from None
