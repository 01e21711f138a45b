"""What a virtual network is: the frozen, validated ``NetworkSpec``.

Three kinds, as a host's operator knows them:

* ``nat`` — a virtual router: a Linux bridge of corral's own holding the gateway address of
  a private subnet, DHCP and DNS for it (dnsmasq), and masquerading out of the host's uplink
  (nftables);
* ``isolated`` — the same bridge, DHCP and DNS, with no route out: guests reach each other
  and the gateway address only;
* ``bridged`` — guests' taps join an existing bridge of the host (one that holds a physical
  NIC, say): addresses come from that network, not from corral.

An optional VLAN tag puts a network's taps in that VLAN of its bridge (untagged inside the
guest). Everything here is pure; what the host already has (interfaces, addresses, other
networks) is checked where the plan meets the host (:mod:`corral.net.plan`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: A network's name: part of guests' DNS names (``<vm>.<network>``) and of its bridge's name.
NETWORK_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,10}$"
#: A Linux interface name (``IFNAMSIZ`` is 16 with the NUL); no '/', ':', or whitespace.
IFNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
#: The longest prefix that still leaves room for a gateway and a guest.
MAX_PREFIX = 29
#: The shortest prefix corral manages: a /16 already has 65,534 addresses.
MIN_PREFIX = 16
#: Where a managed network's subnet may lie: RFC 1918's private blocks and RFC 6598's shared
#: address space (never documentation, benchmarking or reserved ranges).
PRIVATE_BLOCKS = tuple(
    ipaddress.IPv4Network(block)
    for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
#: Names a network cannot have: ``user`` is the user-mode NAT NIC's (``--net user``).
RESERVED_NAMES = frozenset({"user"})
#: The bridge corral makes for a managed network: ``crb-`` and the network's name.
BRIDGE_PREFIX = "crb-"

NetworkKind = Literal["nat", "isolated", "bridged"]


def bridge_name(network: str) -> str:
    """The name of the bridge corral makes for managed network ``network``."""
    return f"{BRIDGE_PREFIX}{network}"


def check_ifname(value: str, field: str) -> str:
    """:raise ValueError: ``value`` is not a Linux interface name (naming ``field``)."""
    if not IFNAME_PATTERN.match(value) or value in (".", ".."):
        raise ValueError(
            f"{field} {value!r} is not an interface name: 1-15 of A-Z, a-z, 0-9, '_', '.', '-'"
        )
    return value


class NetworkSpec(BaseModel):
    """A virtual network, as its owner defines it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NETWORK_NAME_PATTERN)
    kind: NetworkKind = "nat"
    #: The private subnet of a ``nat`` or ``isolated`` network (``None`` for ``bridged``).
    subnet: ipaddress.IPv4Network | None = None
    #: The bridge's address in ``subnet``; its first host address unless given.
    gateway: ipaddress.IPv4Address | None = None
    #: The existing host bridge a ``bridged`` network joins.
    bridge: str | None = None
    #: The host interface a ``nat`` network masquerades out of; the one of the host's default
    #: route unless given.
    uplink: str | None = None
    #: A VLAN (1-4094) for the network's taps on its bridge.
    vlan: int | None = Field(default=None, ge=1, le=4094)

    @field_validator("subnet", mode="before")
    @classmethod
    def _strict_subnet(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return ipaddress.IPv4Network(value, strict=True)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IPv4 subnet: {exc}") from None
        return value

    @field_validator("bridge", "uplink")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        return None if value is None else check_ifname(value, "interface")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved: it names the user-mode NAT NIC (--net user)")
        return value

    @model_validator(mode="after")
    def _check(self) -> NetworkSpec:
        if self.kind == "bridged":
            if self.bridge is None:
                raise ValueError("a bridged network needs the host bridge it joins (bridge)")
            if self.subnet is not None or self.gateway is not None:
                raise ValueError(
                    "a bridged network takes its addresses from the host's network: "
                    "no subnet or gateway"
                )
            if self.uplink is not None:
                raise ValueError("only a nat network has an uplink")
            return self
        if self.subnet is None:
            raise ValueError(f"a {self.kind} network needs a subnet, e.g. 10.77.0.0/24")
        subnet = self.subnet
        if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
            raise ValueError(
                f"subnet {subnet} is a /{subnet.prefixlen}: corral manages /{MIN_PREFIX} "
                f"to /{MAX_PREFIX}"
            )
        if not any(subnet.subnet_of(block) for block in PRIVATE_BLOCKS):
            raise ValueError(
                f"subnet {subnet} is not a private range (10/8, 172.16/12, 192.168/16, 100.64/10)"
            )
        if self.gateway is not None and (
            self.gateway not in subnet
            or self.gateway in (subnet.network_address, subnet.broadcast_address)
        ):
            raise ValueError(f"gateway {self.gateway} is not a host address of {subnet}")
        if self.bridge is not None:
            raise ValueError(f"a {self.kind} network has a bridge of corral's own (no bridge)")
        if self.kind == "isolated" and self.uplink is not None:
            raise ValueError("an isolated network has no uplink")
        return self

    @property
    def managed(self) -> bool:
        """Whether corral runs the network's bridge, addresses, DHCP and DNS."""
        return self.kind != "bridged"

    @property
    def bridge_ifname(self) -> str:
        """The bridge the network's taps join."""
        if self.bridge is not None:
            return self.bridge
        return bridge_name(self.name)

    @property
    def gateway_address(self) -> ipaddress.IPv4Address:
        """The bridge's address in the subnet (managed networks only)."""
        assert self.subnet is not None
        return self.gateway or next(self.subnet.hosts())

    def overlaps(self, other: NetworkSpec) -> bool:
        """Whether the two networks' subnets share an address."""
        if self.subnet is None or other.subnet is None:
            return False
        return self.subnet.overlaps(other.subnet)
