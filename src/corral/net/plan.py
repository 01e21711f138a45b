"""What the host must have for a set of virtual networks and guest NICs, planned without
touching it: bridges, taps, each managed network's dnsmasq configuration and host lists, and
corral's nftables tables.

:mod:`corral.net.apply` makes the host match a :class:`HostPlan`; applying the same plan twice
changes nothing. Every name and address that reaches a configuration file or an nft script
here has been validated by :mod:`corral.spec.net` (interface names, subnets) or made by corral
(tap names, MACs, addresses): no user string is interpolated unchecked.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from corral.errors import Conflict
from corral.net.floating import FloatingMapping
from corral.net.floating import rules as floating_rules
from corral.net.security import SecurityPlan, bridge_table, inet_chains
from corral.spec.net import IFNAME_PATTERN, NetworkSpec

#: The nftables table (family ``inet``) that holds corral's filtering and NAT: replaced whole,
#: atomically, by every apply; nothing else of the host's ruleset is touched.
TABLE = "corral"
#: The tap of a guest NIC: ``crt-`` and eleven hex digits of the NIC's id.
TAP_PREFIX = "crt-"
#: The interface alias of corral's bridges and taps: this prefix and the network's name.
ALIAS_PREFIX = "corral:"
#: A lease's lifetime in dnsmasq's terms: guests renew long before, corral's leases are static.
LEASE_TIME = "1h"


def tap_name(nic_id: str) -> str:
    """The tap device of the NIC with id ``nic_id`` (a UUID's hex digits suffice)."""
    digits = "".join(c for c in nic_id.lower() if c in "0123456789abcdef")
    if len(digits) < 11:
        raise ValueError(f"NIC id {nic_id!r} has fewer than 11 hex digits")
    return f"{TAP_PREFIX}{digits[:11]}"


def nic_tap(vm: UUID, nic: str) -> str:
    """The tap device of NIC ``nic`` of the VM with UUID ``vm``: a function of the two alone,
    so it is the same on every start, after a restart of corrald and on every host, and
    nothing needs to remember it. Eleven hex digits of SHA-256 (44 bits) keep the taps of
    different NICs apart.
    """
    return tap_name(hashlib.sha256(f"{vm}/{nic}".encode()).hexdigest())


@dataclass(frozen=True)
class Lease:
    """A guest's fixed address on a managed network, and its DNS name there."""

    mac: str
    address: ipaddress.IPv4Address
    #: The VM's name: ``<hostname>.<network>`` resolves to ``address``.
    hostname: str


@dataclass(frozen=True)
class Port:
    """A guest NIC's tap on a network's bridge."""

    tap: str
    network: str
    mac: str
    #: Carrier up (``link up``) or down, as the guest sees its link.
    up: bool = True


@dataclass(frozen=True)
class HostPlan:
    """Everything corral's networks need of the host."""

    networks: tuple[NetworkSpec, ...]
    ports: tuple[Port, ...] = ()
    #: Fixed addresses by network name (managed networks only).
    leases: Mapping[str, tuple[Lease, ...]] = field(default_factory=dict)
    #: The uplink each ``nat`` network masquerades out of, resolved (its own, or the host's
    #: default route's interface); a nat network without one is planned with no way out.
    uplinks: Mapping[str, str] = field(default_factory=dict)
    #: The associated floating IPs (:mod:`corral.net.floating`).
    floating: tuple[FloatingMapping, ...] = ()
    #: Every allocated floating address: each is added (``/32``) to ``floating_interface``.
    floating_addresses: tuple[ipaddress.IPv4Address, ...] = ()
    #: Where floating addresses live; ``None``: nowhere (and no floating rules).
    floating_interface: str | None = None
    #: The security groups and the ports they guard (:mod:`corral.net.security`).
    security: SecurityPlan = field(default_factory=SecurityPlan)

    @property
    def managed(self) -> tuple[NetworkSpec, ...]:
        return tuple(n for n in self.networks if n.managed)

    def network(self, name: str) -> NetworkSpec:
        return next(n for n in self.networks if n.name == name)


def alias(network: str) -> str:
    """The interface alias that marks a bridge or tap as corral's, for ``network``."""
    return f"{ALIAS_PREFIX}{network}"


def check_host(plan: HostPlan, aliases: Mapping[str, str | None]) -> None:
    """Check ``plan`` against the host's interfaces before anything is changed.

    :param aliases: every interface of the host by name, with its alias (``None``: none).
    :raise Conflict: a managed network's bridge name is taken by an interface that is not
        corral's, or a bridged network's bridge does not exist (naming it).
    """
    for spec in plan.networks:
        name = spec.bridge_ifname
        if spec.managed:
            if name in aliases and aliases[name] != alias(spec.name):
                raise Conflict(
                    f"interface {name!r} exists and is not corral's bridge of network "
                    f"{spec.name!r} (its alias is {aliases[name]!r}, not {alias(spec.name)!r})"
                )
        elif name not in aliases:
            raise Conflict(f"bridge {name!r} of bridged network {spec.name!r} does not exist")


def stale_links(
    plan: HostPlan, aliases: Mapping[str, str | None], taps: Collection[str]
) -> list[str]:
    """The interfaces of corral's that ``plan`` no longer has, taps before bridges.

    :param aliases: every interface of the host by name, with its alias.
    :param taps: which of them are tap devices.
    """
    wanted_taps = {port.tap for port in plan.ports}
    bridges = {spec.bridge_ifname for spec in plan.managed}
    stale = sorted(t for t in taps if t.startswith(TAP_PREFIX) and t not in wanted_taps)
    stale += sorted(
        name
        for name, tag in aliases.items()
        if tag is not None
        and tag.startswith(ALIAS_PREFIX)
        and name not in taps
        and name not in bridges
    )
    return stale


def _ifname(name: str) -> str:
    """``name`` quoted for nft, once more checked to be an interface name."""
    if not IFNAME_PATTERN.match(name):
        raise ValueError(f"{name!r} is not an interface name")
    return f'"{name}"'


def ruleset(plan: HostPlan) -> str:
    """The nft script that replaces corral's table with what ``plan`` needs, in one
    transaction (``nft -f``): the table is declared, deleted and made anew, so a script that
    fails leaves the previous table in place.

    * ``forward``: a managed network's guests reach each other; a ``nat`` network's guests
      reach out through its uplink and get answers back; nothing else crosses a managed
      bridge (an ``isolated`` network has no way out at all).
    * ``postrouting``: a ``nat`` network's addresses are masqueraded behind the uplink's.
    * ``prerouting``, ``output`` and the first rules of ``postrouting`` and ``forward``: the
      floating IPs (:func:`corral.net.floating.rules`).
    * the security groups' sets and chains, and ``table bridge corral`` against spoofing
      (:mod:`corral.net.security`).
    """
    fips = floating_rules(plan.floating, plan.floating_interface)
    forward: list[str] = ["ct state invalid drop", *fips.forward]
    nat: list[str] = list(fips.postrouting)
    for spec in plan.managed:
        bridge = _ifname(spec.bridge_ifname)
        forward.append(f"iifname {bridge} oifname {bridge} accept")
        uplink = plan.uplinks.get(spec.name) if spec.kind == "nat" else None
        if uplink is not None:
            out = _ifname(uplink)
            forward.append(f"iifname {bridge} oifname {out} ip saddr {spec.subnet} accept")
            forward.append(
                f"iifname {out} oifname {bridge} ip daddr {spec.subnet} "
                "ct state established,related accept"
            )
            nat.append(f"oifname {out} ip saddr {spec.subnet} ip daddr != {spec.subnet} masquerade")
        forward.append(f"iifname {bridge} drop")
        forward.append(f"oifname {bridge} drop")
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *(f"    {rule}" for rule in forward),
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *(f"    {rule}" for rule in nat),
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {rule}" for rule in fips.prerouting),
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        *(f"    {rule}" for rule in fips.output),
        "  }",
        *inet_chains(plan.security),
        "}",
        *bridge_table(plan.security),
    ]
    return "\n".join(lines) + "\n"


def remove_ruleset() -> str:
    """The nft script that removes corral's tables, whether or not they exist."""
    return (
        f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        + "\n".join(bridge_table(SecurityPlan()))
        + "\n"
    )


@dataclass(frozen=True)
class DnsmasqFiles:
    """Where one network's dnsmasq keeps its files (a directory of corral's)."""

    root: str

    @property
    def conf(self) -> str:
        return f"{self.root}/dnsmasq.conf"

    @property
    def dhcp_hosts(self) -> str:
        return f"{self.root}/dhcp-hosts"

    @property
    def dns_hosts(self) -> str:
        return f"{self.root}/dns-hosts"

    @property
    def leases(self) -> str:
        return f"{self.root}/leases"

    @property
    def pidfile(self) -> str:
        return f"{self.root}/dnsmasq.pid"

    @property
    def log(self) -> str:
        return f"{self.root}/dnsmasq.log"


def dnsmasq_conf(spec: NetworkSpec, files: DnsmasqFiles) -> str:
    """The configuration of managed network ``spec``'s dnsmasq.

    It serves only the network's bridge, has no upstream servers (``no-resolv``, no
    ``server=``: it answers for ``<vm>.<network>`` names and nothing else), gives addresses
    only to the guests corral assigned one (``static`` range; the host lists are re-read on
    ``SIGHUP``), and offers the gateway as router (``nat`` only) and name server.
    """
    assert spec.subnet is not None
    gateway = spec.gateway_address
    lines = [
        f"interface={spec.bridge_ifname}",
        "bind-interfaces",
        "except-interface=lo",
        f"listen-address={gateway}",
        "no-resolv",
        "no-hosts",
        "no-poll",
        f"domain={spec.name}",
        f"local=/{spec.name}/",
        "domain-needed",
        "bogus-priv",
        f"dhcp-range={spec.subnet.network_address},static,{spec.subnet.netmask},{LEASE_TIME}",
        f"dhcp-hostsfile={files.dhcp_hosts}",
        f"addn-hosts={files.dns_hosts}",
        f"dhcp-leasefile={files.leases}",
        "dhcp-authoritative",
        f"dhcp-option=option:dns-server,{gateway}",
        f"dhcp-option=option:domain-search,{spec.name}",
        f"pid-file={files.pidfile}",
        f"log-facility={files.log}",
        # The host lists live in corral's state directory, which only root may enter, and
        # are re-read on SIGHUP: dnsmasq keeps root's identity to read them.
        "user=root",
    ]
    # A nat network's gateway routes; an isolated network offers no router at all.
    router = f"option:router,{gateway}" if spec.kind == "nat" else "option:router"
    lines.append(f"dhcp-option={router}")
    return "\n".join(lines) + "\n"


def dhcp_hosts(leases: Sequence[Lease]) -> str:
    """dnsmasq's ``dhcp-hostsfile``: one ``MAC,address,name`` per guest."""
    return "".join(f"{lease.mac},{lease.address},{lease.hostname}\n" for lease in leases)


def dns_hosts(spec: NetworkSpec, leases: Sequence[Lease]) -> str:
    """dnsmasq's ``addn-hosts``: each guest as ``<vm>.<network>`` (and its bare name), and the
    gateway as ``gateway.<network>``."""
    lines = [f"{spec.gateway_address} gateway.{spec.name} gateway\n"]
    lines += [
        f"{lease.address} {lease.hostname}.{spec.name} {lease.hostname}\n" for lease in leases
    ]
    return "".join(lines)
