"""Wire types of security groups (``/security-groups``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create, Read
from corral.spec.security import GROUP_NAME_PATTERN


class RuleCreate(Create):
    """A rule (``POST /security-groups/{name}/rules``, or in a group's ``rules``); the service
    checks the fields together (a refusal names the field)."""

    direction: Literal["in", "out"] = Field(
        default="in", description="in: to the guest; out: from the guest."
    )
    protocol: Literal["tcp", "udp", "icmp", "any"] = "tcp"
    ports: str | None = Field(
        default=None,
        max_length=11,
        description="tcp and udp only: a port (80) or a range (8000-8100) in 1-65535; "
        "every port if left out.",
        examples=["22", "8000-8100"],
    )
    cidr: str | None = Field(
        default=None,
        max_length=18,
        description="The peer as an IPv4 CIDR (the source of an in rule, the destination "
        "of an out rule).",
        examples=["10.77.0.0/24"],
    )
    group: str | None = Field(
        default=None,
        max_length=63,
        description="The peer as the NICs of a security group of the same project.",
    )


class GroupCreate(Create):
    """A security group to create (``POST /security-groups``)."""

    name: str = Field(
        pattern=GROUP_NAME_PATTERN,
        description="Unique in its project: a lower-case letter, then lower-case letters, "
        "digits or '-'.",
        examples=["web"],
    )
    description: str = Field(default="", max_length=255)
    rules: list[RuleCreate] = Field(default_factory=list, max_length=1000)
    project: str = Field(default="default", max_length=63, description="The project, by name.")


class AttachmentCreate(Create):
    """Which NIC of a VM a group is attached to or detached from."""

    vm: str = Field(max_length=63, description="The VM, by name.", examples=["a"])
    nic: str | None = Field(
        default=None,
        max_length=63,
        description="The VM's NIC (net0); its only NIC on a network if left out.",
    )


class RuleRead(Read):
    """A rule of a group."""

    id: str = Field(description="The rule's id (a unique prefix of it removes it).")
    direction: str
    protocol: str
    ports: str | None
    cidr: str | None
    group: str | None = Field(description="The peer group's name.")


class GroupRead(Read):
    """A security group, its rules, and the NICs (``vm/nic``) it is attached to."""

    name: str
    project: str
    description: str
    rules: list[RuleRead]
    attached: list[str]
    created_at: str
