"""Wire types of a VM's network cards (``/vms/{name}/nics``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create, Read
from corral.spec.net import NETWORK_NAME_PATTERN

#: The card models, as the API names them.
NicModel = Literal["virtio-net-pci", "e1000"]


class NicCreate(Create):
    """``POST /vms/{name}/nics``: the NIC to add."""

    network: str = Field(
        pattern=NETWORK_NAME_PATTERN,
        description="The virtual network it is on, by name.",
        examples=["lan"],
    )
    ip: str | None = Field(
        default=None,
        max_length=15,
        description="A fixed IPv4 address in a managed network's subnet; the lowest free "
        "one if left out.",
        examples=["10.77.0.20"],
    )
    model: NicModel = Field(
        default="virtio-net-pci",
        description="The card: virtio-net-pci (with vhost-net where the host has it) or e1000.",
    )


class NicUpdate(Create):
    """``PATCH /vms/{name}/nics/{nic}``: the NIC's carrier."""

    link: bool = Field(description="Carrier up (true) or down (false).")


class NicRead(Read):
    """One NIC of a VM."""

    name: str = Field(description="Its name in the VM (net0, net1, ...).")
    kind: Literal["user", "network"] = Field(
        description="user (user-mode NAT) or network (a tap on a virtual network)."
    )
    model: str
    network: str | None = Field(description="The network it is on (network NICs).")
    mac: str
    address: str | None = Field(description="Its address on a managed network.")
    tap: str | None = Field(description="The host's tap device (network NICs).")
    link: bool = Field(description="Carrier up or down.")
