"""Wire types of floating IPs (``/floating-ips``)."""

from __future__ import annotations

from pydantic import Field

from corral.api.schemas.base import Create, Read
from corral.spec.vm import DEVICE_NAME_PATTERN, NAME_PATTERN


class FloatingIpCreate(Create):
    """An allocation (``POST /floating-ips``): the lowest free address of the pool."""

    project: str = Field(
        default="default", max_length=63, description="The project, by name.", examples=["p1"]
    )


class FloatingIpAssociate(Create):
    """An association (``POST /floating-ips/{address}/associate``)."""

    vm: str = Field(pattern=NAME_PATTERN, description="The VM, by name.", examples=["web1"])
    nic: str | None = Field(
        default=None,
        pattern=DEVICE_NAME_PATTERN,
        description="Its NIC on a managed network; its first such NIC if left out.",
        examples=["net0"],
    )


class FloatingIpRead(Read):
    """A floating IP, and where it is associated."""

    address: str
    project: str
    vm: str | None = Field(description="The VM it is associated with; none if it is not.")
    nic: str | None
    guest: str | None = Field(description="The guest address it is translated to.")
    created_at: str
