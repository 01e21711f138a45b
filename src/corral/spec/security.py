"""What a security group's rule is: the frozen, validated ``RuleSpec``, and the shorthand the
CLI writes it in.

A rule lets traffic in (``in``: to the guest) or out (``out``: from the guest) for one
protocol (``tcp``, ``udp``, ``icmp`` or ``any``), on a port range for ``tcp`` and ``udp``
(``80`` or ``8000-8100``; none: every port), from or to a peer: an IPv4 CIDR, the ports of
another security group of the same project, or anywhere (neither). Everything here is pure;
which group a ``group`` peer names is the service's to resolve
(:mod:`corral.compute.security`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: A security group's name (as a VM's: it is shown in listings and typed on the CLI).
GROUP_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
#: A port range as written: ``80`` or ``8000-8100``.
PORTS_PATTERN = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")

Direction = Literal["in", "out"]
Protocol = Literal["tcp", "udp", "icmp", "any"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "icmp", "any")


def parse_ports(text: str) -> tuple[int, int]:
    """The range ``text`` writes (``80`` or ``8000-8100``), as ``(min, max)``.

    :raise ValueError: not a range, a port out of 1-65535, or ``min > max`` (an impossible
        port range).
    """
    match = PORTS_PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a port range: write 80 or 8000-8100")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValueError(f"impossible port range {text!r}: port {port} is not in 1-65535")
    if low > high:
        raise ValueError(f"impossible port range {text!r}: {low} is above {high}")
    return low, high


class RuleSpec(BaseModel):
    """One rule of a security group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    direction: Direction = "in"
    protocol: Protocol = "tcp"
    #: The first and last port (tcp and udp only; ``None``: every port).
    port_min: int | None = Field(default=None, ge=1, le=65535)
    port_max: int | None = Field(default=None, ge=1, le=65535)
    #: The peer as a CIDR (``None`` with no ``group``: anywhere).
    cidr: ipaddress.IPv4Network | None = None
    #: The peer as another security group of the same project, by name.
    group: str | None = Field(default=None, pattern=GROUP_NAME_PATTERN)

    @field_validator("cidr", mode="before")
    @classmethod
    def _cidr(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return ipaddress.IPv4Network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IPv4 CIDR ({exc})") from None
        return value

    @model_validator(mode="after")
    def _together(self) -> RuleSpec:
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("ports: give both port_min and port_max, or neither")
        if self.port_min is not None and self.port_max is not None:
            if self.protocol not in ("tcp", "udp"):
                raise ValueError(f"ports: a port range is for tcp and udp, not {self.protocol}")
            if self.port_min > self.port_max:
                raise ValueError(f"ports: impossible port range {self.port_min}-{self.port_max}")
        if self.cidr is not None and self.group is not None:
            raise ValueError("peer: a rule's peer is a CIDR or a group, not both")
        return self

    @property
    def ports(self) -> str | None:
        """The port range as written (``80``, ``8000-8100``), or ``None``."""
        if self.port_min is None:
            return None
        if self.port_min == self.port_max:
            return str(self.port_min)
        return f"{self.port_min}-{self.port_max}"

    @property
    def shorthand(self) -> str:
        """The rule's protocol and ports as the CLI writes them: ``tcp/80``, ``icmp``."""
        return self.protocol if self.ports is None else f"{self.protocol}/{self.ports}"


def parse_allow(
    text: str,
    direction: Direction = "in",
    cidr: str | None = None,
    group: str | None = None,
) -> RuleSpec:
    """The rule the CLI's shorthand ``text`` writes: ``tcp/80``, ``udp/53``,
    ``tcp/8000-8100``, ``icmp``, ``any`` (``tcp`` alone: every tcp port).

    :raise ValueError: an unknown protocol, a bad or impossible port range, or a range on a
        protocol without ports (the message names ``ports`` or ``protocol``).
    """
    protocol, _, ports = text.strip().lower().partition("/")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    fields: dict[str, object] = {"direction": direction, "protocol": protocol}
    if ports:
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"ports: a port range is for tcp and udp, not {protocol}")
        fields["port_min"], fields["port_max"] = parse_ports(ports)
    if cidr is not None:
        fields["cidr"] = cidr
    if group is not None:
        fields["group"] = group
    return RuleSpec.model_validate(fields)
