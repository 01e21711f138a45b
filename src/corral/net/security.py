"""Security groups as nftables rules, planned without touching the host; the lines
:func:`corral.net.plan.ruleset` puts in corral's tables, in the same transaction.

A guest port with no group is not filtered. A port with one or more groups (a
:class:`Guard`) is filtered by its address, which corral assigned it (a static lease):

* inbound, everything is dropped but established and related traffic and what a rule
  (``in``) of one of its groups allows;
* outbound, everything is allowed, unless its groups have ``out`` rules: then only what they
  allow and established and related traffic.

The filtering is in ``table inet corral``: a ``forward`` chain for traffic between guests and
routed traffic, an ``output`` chain for the host's own traffic to a guest. Guests on one
bridge reach each other without routing: their frames pass the IP hooks only with
``bridge-nf-call-iptables`` on in the namespace, which :mod:`corral.net.apply` turns on when
a plan has guards. This makes *every* bridged IPv4 frame of the namespace pass the IP hooks
(and whatever other firewall the host has there), as OpenStack's iptables firewall has it.
In those hooks a bridged frame's interfaces are the bridge's, not the tap's: the rules match
guests by address. That an address is the guest's own is enforced in ``table bridge corral``
(stateless, per tap): a guarded port's frames must carry its MAC, its address as IPv4 source
(``0.0.0.0`` only for DHCP) and ARP sender; anything but IPv4 and ARP is dropped, as it
would pass unfiltered. A rule whose peer is a group matches an nft set per group (``sg_``
and the group's key) holding its ports' addresses.

The service checks what travels here; the names and addresses are checked once more before
they reach an nft script.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.spec.net import IFNAME_PATTERN
from corral.spec.security import Direction, Protocol

#: The nftables table (family ``bridge``) that stops guarded ports from spoofing.
BRIDGE_TABLE = "corral"
#: A group's key: a name nft accepts in a set's name (corral's group ids, without dashes).
KEY_PATTERN = re.compile(r"^[a-z0-9]{1,64}$")


@dataclass(frozen=True)
class Rule:
    """One rule of a group, as the host needs it."""

    direction: Direction
    protocol: Protocol
    port_min: int | None = None
    port_max: int | None = None
    cidr: ipaddress.IPv4Network | None = None
    #: The key of the group whose ports are the peer.
    group: str | None = None


@dataclass(frozen=True)
class Guard:
    """A guest port with security groups: its tap, MAC, address and its groups' keys."""

    tap: str
    mac: str
    address: ipaddress.IPv4Address
    groups: tuple[str, ...]


@dataclass(frozen=True)
class SecurityPlan:
    """The groups (by key, with their rules) and the guarded ports."""

    groups: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    guards: tuple[Guard, ...] = ()

    @property
    def active(self) -> bool:
        """Whether any port is guarded (then the bridge table and the sysctl are needed)."""
        return bool(self.guards)


def group_key(group_id: str) -> str:
    """The key of the group with id ``group_id`` (its hex digits, lower-case)."""
    key = group_id.replace("-", "").lower()
    if not KEY_PATTERN.match(key):
        raise ValueError(f"{group_id!r} is not a group id")
    return key


def _key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"{key!r} is not a group key")
    return key


def _tap(name: str) -> str:
    if not IFNAME_PATTERN.match(name):
        raise ValueError(f"{name!r} is not an interface name")
    return name


def _chain(prefix: str, tap: str) -> str:
    """A per-port chain's name (nft names take letters, digits and ``_``)."""
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", _tap(tap))


def _mac(mac: str) -> str:
    if not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", mac):
        raise ValueError(f"{mac!r} is not a MAC address")
    return mac


def rule_line(rule: Rule, verdict: str = "return") -> str:
    """The nft match of ``rule`` ending in ``verdict``: the protocol and ports, then the peer
    (source for ``in``, destination for ``out``)."""
    parts: list[str] = []
    if rule.protocol != "any":
        parts.append(f"meta l4proto {rule.protocol}")
    if rule.port_min is not None and rule.port_max is not None:
        low, high = int(rule.port_min), int(rule.port_max)
        parts.append(f"th dport {low}" if low == high else f"th dport {low}-{high}")
    side = "saddr" if rule.direction == "in" else "daddr"
    if rule.cidr is not None:
        parts.append(f"ip {side} {ipaddress.IPv4Network(rule.cidr)}")
    elif rule.group is not None:
        parts.append(f"ip {side} @sg_{_key(rule.group)}")
    parts.append(verdict)
    return " ".join(parts)


def _rules(plan: SecurityPlan, guard: Guard, direction: Direction) -> list[Rule]:
    return [
        rule
        for key in guard.groups
        for rule in plan.groups.get(key, ())
        if rule.direction == direction
    ]


def inet_chains(plan: SecurityPlan) -> list[str]:
    """The sets and chains of ``table inet corral`` for ``plan`` (lines of the table's body,
    indented); none when no port is guarded.

    Inbound, each group's rules are written once, in a chain of the group's own
    (``ingress_<key>``) that accepts what they allow; a guarded port's chain jumps to each of
    its groups' chains in turn and drops what none accepted. An accept there ends only the
    guard chains' base chain (``guard_forward``, ``guard_output``): the packet still passes
    the table's other chains (bridge isolation, floating IPs). A port's ``in`` chain is the
    last rule a packet meets in ``guard_forward`` (its ``out`` chains come first), so nothing
    is skipped. Outbound rules, rarer, end in ``return`` per port, so that the destination's
    inbound check still follows.
    """
    if not plan.active:
        return []
    lines: list[str] = []
    guarded = {key for guard in plan.guards for key in guard.groups}
    for key in sorted(plan.groups):
        members = sorted({g.address for g in plan.guards if key in g.groups})
        elements = f" elements = {{ {', '.join(map(str, members))} }};" if members else ""
        lines.append(f"  set sg_{_key(key)} {{ type ipv4_addr;{elements} }}")
    forward = ["type filter hook forward priority filter - 1; policy accept;"]
    output = [
        "type filter hook output priority filter - 1; policy accept;",
        # dnsmasq's DHCP answers go to an address the guest does not hold yet.
        "udp sport 67 udp dport 68 accept",
    ]
    chains: list[tuple[str, list[str]]] = []
    for key in sorted(guarded):
        inward = [r for r in plan.groups.get(key, ()) if r.direction == "in"]
        chains.append((f"ingress_{_key(key)}", [rule_line(r, "accept") for r in inward]))
    established = "ct state established,related"
    outbound: list[str] = []
    inbound: list[str] = []
    for guard in plan.guards:
        address = ipaddress.IPv4Address(guard.address)
        chain = _chain("in_", guard.tap)
        inbound.append(f"ip daddr {address} jump {chain}")
        output.append(f"ip daddr {address} jump {chain}")
        jumps = [f"jump ingress_{_key(key)}" for key in guard.groups]
        chains.append((chain, [f"{established} accept", *jumps, "drop"]))
        outward = _rules(plan, guard, "out")
        if outward:
            chain = _chain("out_", guard.tap)
            outbound.append(f"ip saddr {address} jump {chain}")
            body = [f"{established} return", *(rule_line(r) for r in outward), "drop"]
            chains.append((chain, body))
    forward += outbound + inbound
    lines += ["  chain guard_forward {", *(f"    {r}" for r in forward), "  }"]
    lines += ["  chain guard_output {", *(f"    {r}" for r in output), "  }"]
    for name, body in chains:
        lines += [f"  chain {name} {{", *(f"    {r}" for r in body), "  }"]
    return lines


def bridge_table(plan: SecurityPlan) -> list[str]:
    """The nft lines that replace ``table bridge corral`` (declared and deleted first, so a
    plan without guards removes it; made anew only when a port is guarded)."""
    lines = [f"table bridge {BRIDGE_TABLE}", f"delete table bridge {BRIDGE_TABLE}"]
    if not plan.active:
        return lines
    dispatch = ["type filter hook prerouting priority -300; policy accept;"]
    chains: list[str] = []
    for guard in plan.guards:
        chain = _chain("spoof_", guard.tap)
        mac = _mac(guard.mac)
        address = ipaddress.IPv4Address(guard.address)
        dispatch.append(f'iifname "{_tap(guard.tap)}" jump {chain}')
        body = [
            f"ether saddr != {mac} drop",
            "ether type != { ip, arp } drop",
            f"arp saddr ether != {mac} drop",
            f"arp saddr ip != {{ 0.0.0.0, {address} }} drop",
            "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
            f"ether type ip ip saddr != {address} drop",
        ]
        chains += [f"  chain {chain} {{", *(f"    {r}" for r in body), "  }"]
    return [
        *lines,
        f"table bridge {BRIDGE_TABLE} {{",
        "  chain prerouting {",
        *(f"    {r}" for r in dispatch),
        "  }",
        *chains,
        "}",
    ]


def remove_bridge_table() -> str:
    """The nft script that removes the bridge table, whether or not it exists."""
    return "\n".join(bridge_table(SecurityPlan())) + "\n"
