"""Address management for managed networks: which guest gets which address and MAC.

Pure: the caller passes what is taken (from the database) and records what it gets, in the
same transaction, so that two guests never get one address.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Collection

from corral.errors import Conflict, InvalidInput
from corral.spec.net import NetworkSpec

#: QEMU's prefix, locally administered (the first octet's 0x02 bit): what libvirt and
#: Proxmox guests carry, so that every DHCP server and switch treats them alike.
MAC_PREFIX = "52:54:00"
#: Tries at a random free MAC before giving up (a host would need millions of NICs to fail).
MAC_TRIES = 64


def free_address(
    spec: NetworkSpec, taken: Collection[ipaddress.IPv4Address]
) -> ipaddress.IPv4Address:
    """The lowest host address of ``spec``'s subnet that is neither the gateway nor taken.

    :raise Conflict: every address is taken (naming the network and how many are in use).
    """
    assert spec.subnet is not None
    used = {*taken, spec.gateway_address}
    for address in spec.subnet.hosts():
        if address not in used:
            return address
    raise Conflict(
        f"network {spec.name!r} has no free address: {len(used) - 1} guests use all of "
        f"{spec.subnet}"
    )


def check_address(
    spec: NetworkSpec, address: ipaddress.IPv4Address, taken: Collection[ipaddress.IPv4Address]
) -> None:
    """Check a fixed address asked for a guest on ``spec``.

    :raise InvalidInput: (field ``ip``) not a host address of the subnet, or the gateway.
    :raise Conflict: another guest has it.
    """
    assert spec.subnet is not None
    if address not in spec.subnet or address in (
        spec.subnet.network_address,
        spec.subnet.broadcast_address,
    ):
        raise InvalidInput("ip", f"{address} is not a host address of {spec.subnet}")
    if address == spec.gateway_address:
        raise InvalidInput("ip", f"{address} is network {spec.name!r}'s gateway")
    if address in taken:
        raise Conflict(f"address {address} of network {spec.name!r} is taken")


def free_mac(taken: Collection[str], token: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A random MAC under :data:`MAC_PREFIX` that no NIC has.

    :raise Conflict: none found in :data:`MAC_TRIES` tries.
    """
    for _ in range(MAC_TRIES):
        tail = token(3)
        mac = f"{MAC_PREFIX}:{tail[0]:02x}:{tail[1]:02x}:{tail[2]:02x}"
        if mac not in taken:
            return mac
    raise Conflict(f"no free MAC address under {MAC_PREFIX} after {MAC_TRIES} tries")


def check_subnets(spec: NetworkSpec, others: Collection[NetworkSpec]) -> None:
    """Check ``spec``'s subnet against the other networks'.

    :raise Conflict: it overlaps one (naming it and its subnet).
    """
    for other in others:
        if other.name != spec.name and spec.overlaps(other):
            raise Conflict(f"subnet {spec.subnet} overlaps network {other.name!r} ({other.subnet})")
