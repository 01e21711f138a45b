"""Wire types of virtual networks (``/networks``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create, Read
from corral.spec.net import NETWORK_NAME_PATTERN

#: The kinds of network, as the API names them.
NetworkKind = Literal["nat", "isolated", "bridged"]


class NetworkCreate(Create):
    """A network to create (``POST /networks``); the service checks the fields together
    (a refusal names the field)."""

    name: str = Field(
        pattern=NETWORK_NAME_PATTERN,
        description="Unique on the host: a lower-case letter, then up to 10 lower-case "
        "letters, digits or '-' (it names the bridge and the guests' DNS domain).",
        examples=["lan"],
    )
    kind: NetworkKind = Field(
        default="nat",
        description="nat (a virtual router out of the host's uplink), isolated (no way "
        "out) or bridged (guests join an existing host bridge; admins only).",
    )
    subnet: str | None = Field(
        default=None,
        max_length=18,
        description="A private IPv4 subnet, /16 to /29 (nat and isolated only).",
        examples=["10.77.0.0/24"],
    )
    gateway: str | None = Field(
        default=None,
        max_length=15,
        description="The bridge's address in the subnet; its first host address if left out.",
    )
    bridge: str | None = Field(
        default=None, max_length=15, description="The host bridge a bridged network joins."
    )
    uplink: str | None = Field(
        default=None,
        max_length=15,
        description="The host interface a nat network goes out of; that of the default "
        "route if left out.",
    )
    vlan: int | None = Field(
        default=None, ge=1, le=4094, description="A VLAN tag for the network's taps."
    )
    project: str = Field(
        default="default", max_length=63, description="The project, by name.", examples=["p1"]
    )


class PortRead(Read):
    """A guest NIC on a network."""

    vm: str = Field(description="The VM, by name ('-' for a VM of a project not the caller's).")
    nic: str
    mac: str
    address: str | None = Field(description="Its address; none on a bridged network.")


class NetworkRead(Read):
    """A network; ``ports`` is filled by ``GET /networks/{name}`` only."""

    name: str
    project: str
    kind: NetworkKind
    subnet: str | None
    gateway: str | None = Field(description="The bridge's address (managed networks).")
    bridge: str = Field(description="The bridge its guests' taps join.")
    uplink: str | None
    vlan: int | None
    ports: list[PortRead]
    used: int = Field(description="NICs on the network.")
    free: int | None = Field(description="Addresses still free; none on a bridged network.")
    created_at: str
