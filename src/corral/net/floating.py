"""Floating IPs, planned without touching the host: which address of the pool is free, and
the nft rules that map a floating address to a guest's.

A floating address lives on the host's floating interface (the host answers ARP for it
there); an associated one is translated both ways in corral's ``inet`` table:

* ``prerouting`` (and ``output``, for the host's own connections): ``ip daddr FIP dnat ip to
  GUEST``: what arrives for the floating address goes to the guest;
* ``postrouting``: ``ip saddr GUEST oifname IF snat ip to FIP``, ahead of the nat network's
  masquerade: the guest's own connections out of the floating interface leave from the
  floating address;
* ``forward``: connections translated to the guest (``ct status dnat``) and the guest's
  traffic out of the floating interface pass, ahead of the drops that close managed bridges.

Every address here is an :class:`~ipaddress.IPv4Address` and every interface name is checked
again before it reaches a rule: no text of a user's is interpolated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from corral.errors import Conflict
from corral.spec.net import IFNAME_PATTERN


@dataclass(frozen=True)
class FloatingMapping:
    """An associated floating IP: ``address`` on the host stands for ``guest``."""

    address: ipaddress.IPv4Address
    guest: ipaddress.IPv4Address


@dataclass(frozen=True)
class FloatingRules:
    """The rules of the floating IPs, chain by chain of corral's table."""

    prerouting: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    postrouting: tuple[str, ...] = ()
    forward: tuple[str, ...] = ()


def pool_addresses(pool: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Address]:
    """The addresses of ``pool`` that may be handed out, lowest first: its host addresses
    (every address of a /31 or /32)."""
    if pool.prefixlen >= 31:
        yield from pool
    else:
        yield from pool.hosts()


def free_address(
    pool: ipaddress.IPv4Network | None, taken: Collection[ipaddress.IPv4Address]
) -> ipaddress.IPv4Address:
    """The lowest address of ``pool`` that is not ``taken``.

    :raise Conflict: no pool is configured, or every address of it is allocated.
    """
    if pool is None:
        raise Conflict("this host has no floating pool ([network] floating_pool in corral.toml)")
    for address in pool_addresses(pool):
        if address not in taken:
            return address
    raise Conflict(f"the floating pool {pool} is exhausted ({len(taken)} addresses allocated)")


def in_pool(pool: ipaddress.IPv4Network | None, address: ipaddress.IPv4Address) -> bool:
    """Whether ``address`` is one ``pool`` hands out."""
    return pool is not None and address in set(pool_addresses(pool))


def _ifname(name: str) -> str:
    if not IFNAME_PATTERN.match(name):
        raise ValueError(f"{name!r} is not an interface name")
    return f'"{name}"'


def rules(mappings: Sequence[FloatingMapping], interface: str | None) -> FloatingRules:
    """The nft rules of ``mappings`` (see the module's description); none without a
    floating ``interface``, since the addresses then live nowhere.

    :raise ValueError: two mappings share a floating address or a guest.
    """
    if interface is None or not mappings:
        return FloatingRules()
    addresses = [m.address for m in mappings]
    guests = [m.guest for m in mappings]
    if len(set(addresses)) != len(addresses) or len(set(guests)) != len(guests):
        raise ValueError("a floating address or a guest is mapped twice")
    out = _ifname(interface)
    prerouting: list[str] = []
    postrouting: list[str] = []
    forward: list[str] = []
    for m in sorted(mappings, key=lambda m: m.address):
        fip = ipaddress.IPv4Address(m.address)
        guest = ipaddress.IPv4Address(m.guest)
        prerouting.append(f"ip daddr {fip} dnat ip to {guest}")
        postrouting.append(f"ip saddr {guest} oifname {out} snat ip to {fip}")
        forward.append(f"ip daddr {guest} ct status dnat accept")
        forward.append(f"ip saddr {guest} ct status dnat accept")
        forward.append(f"ip saddr {guest} oifname {out} accept")
        forward.append(f"ip daddr {guest} iifname {out} ct state established,related accept")
    return FloatingRules(
        prerouting=tuple(prerouting),
        output=tuple(prerouting),
        postrouting=tuple(postrouting),
        forward=tuple(forward),
    )


def stale_addresses(
    added: Collection[tuple[str, str]], wanted: Collection[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The ``(interface, address)`` pairs corral added that are no longer wanted."""
    return sorted(set(added) - set(wanted))
