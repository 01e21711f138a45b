"""The host's interfaces as corral's networks use them, over netlink (pyroute2): bridges,
taps, what the host already has.

A bridge or tap of corral's carries the interface alias ``corral:<network>``; a bridge with a
corral name and no such alias belongs to someone else and is never touched. Taps are named
``crt-`` and eleven hex digits (:func:`corral.net.plan.tap_name`); nothing else of that name
is expected on a host.

Everything here acts on the network namespace of the calling thread.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from corral.errors import HostError
from corral.net.plan import ALIAS_PREFIX, TAP_PREFIX, Port, alias
from corral.spec.net import NetworkSpec


@dataclass(frozen=True)
class Link:
    """One interface of the host, as far as corral cares."""

    name: str
    index: int
    #: ``bridge``, ``tun``, ``veth``... (``None`` for a plain device).
    kind: str | None
    alias: str | None
    #: The index of the bridge it is enslaved to, if any.
    master: int | None
    mtu: int
    up: bool

    @property
    def corral(self) -> bool:
        """Whether the interface carries corral's alias."""
        return self.alias is not None and self.alias.startswith(ALIAS_PREFIX)


@contextmanager
def netlink() -> Iterator[Any]:
    """A netlink socket to the calling thread's network namespace."""
    with IPRoute() as ipr:
        yield ipr


def _link(msg: Any) -> Link:
    return Link(
        name=msg.get("IFLA_IFNAME"),
        index=msg["index"],
        kind=msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")),
        alias=msg.get("IFLA_IFALIAS") or None,
        master=msg.get("IFLA_MASTER"),
        mtu=msg.get("IFLA_MTU"),
        up=bool(msg["flags"] & 1),
    )


def links(ipr: Any) -> dict[str, Link]:
    """Every interface of the namespace, by name."""
    found = (_link(msg) for msg in ipr.get_links())
    return {link.name: link for link in found}


def _addresses(ipr: Any, index: int) -> set[ipaddress.IPv4Interface]:
    return {
        ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(family=2, index=index)
    }


def _vlan_unsupported(exc: NetlinkError, what: str) -> HostError:
    return HostError(f"{what}: this kernel's bridges have no VLAN filtering ({exc})")


def ensure_bridge(ipr: Any, spec: NetworkSpec, existing: Mapping[str, Link]) -> bool:
    """Make managed network ``spec``'s bridge as it must be: tagged corral's, the gateway
    address (and no other), VLAN filtering when the network has a VLAN, up.

    :return: whether the bridge was created (rather than found).
    :raise HostError: the kernel refuses VLAN filtering.
    """
    name = spec.bridge_ifname
    created = name not in existing
    if created:
        ipr.link("add", ifname=name, kind="bridge")
    index = ipr.link_lookup(ifname=name)[0]
    link = _link(ipr.link("get", index=index)[0])
    if link.alias != alias(spec.name):
        ipr.link("set", index=index, ifalias=alias(spec.name))
    if spec.vlan is not None:
        try:
            ipr.link("set", index=index, kind="bridge", br_vlan_filtering=1)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise _vlan_unsupported(exc, f"network {spec.name!r} has VLAN {spec.vlan}") from exc
            raise
    assert spec.subnet is not None
    wanted = ipaddress.IPv4Interface(f"{spec.gateway_address}/{spec.subnet.prefixlen}")
    have = _addresses(ipr, index)
    for stale in have - {wanted}:
        ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if wanted not in have:
        ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen)
    if not link.up:
        ipr.link("set", index=index, state="up")
    return created


def ensure_tap(
    ipr: Any, port: Port, bridge: Link, vlan: int | None, existing: Mapping[str, Link]
) -> bool:
    """Make ``port``'s tap as it must be: persistent, ``vnet_hdr`` (for vhost-net), enslaved to
    ``bridge`` with its MTU, tagged corral's, administratively up or down per ``port.up``
    (the guest sees no carrier on a tap that is down), with ``vlan`` as its untagged PVID.

    :return: whether the tap was created.
    :raise HostError: the kernel refuses the VLAN.
    """
    created = port.tap not in existing
    if created:
        ipr.link(
            "add",
            ifname=port.tap,
            kind="tuntap",
            mode="tap",
            ifr={"no_pi": True, "vnet_hdr": True},
        )
    index = ipr.link_lookup(ifname=port.tap)[0]
    link = _link(ipr.link("get", index=index)[0])
    if link.alias != alias(port.network):
        ipr.link("set", index=index, ifalias=alias(port.network))
    if link.master != bridge.index or link.mtu != bridge.mtu:
        ipr.link("set", index=index, master=bridge.index, mtu=bridge.mtu)
    if vlan is not None:
        try:
            ipr.vlan_filter(
                "add", index=index, vlan_info={"vid": vlan, "flags": ["pvid", "untagged"]}
            )
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise _vlan_unsupported(exc, f"tap {port.tap} in VLAN {vlan}") from exc
            raise
    if link.up != port.up or created:
        ipr.link("set", index=index, state="up" if port.up else "down")
    return created


def delete(ipr: Any, name: str) -> None:
    """Remove interface ``name``; one that is already gone is no error."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def is_corral_tap(link: Link) -> bool:
    """Whether ``link`` is a guest NIC's tap of corral's."""
    return link.name.startswith(TAP_PREFIX) and link.kind == "tun"


def default_uplink() -> str | None:
    """The interface of the namespace's default IPv4 route, if it has one."""
    with netlink() as ipr:
        for route in ipr.get_default_routes(family=2):
            index = route.get("RTA_OIF")
            if index is not None:
                return str(ipr.link("get", index=index)[0].get("IFLA_IFNAME"))
    return None


def host_interfaces() -> set[str]:
    """The names of the namespace's interfaces."""
    with netlink() as ipr:
        return set(links(ipr))


def host_subnets() -> dict[str, list[ipaddress.IPv4Network]]:
    """The IPv4 networks of the addresses on the namespace's interfaces, by interface (a
    subnet that overlaps one of them would shadow the host's own network)."""
    with netlink() as ipr:
        names = {link.index: link.name for link in links(ipr).values()}
        found: dict[str, list[ipaddress.IPv4Network]] = {}
        for msg in ipr.get_addr(family=2):
            net = ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}").network
            found.setdefault(names.get(msg["index"], str(msg["index"])), []).append(net)
        return found


def host_addresses(ipr: Any, name: str) -> set[ipaddress.IPv4Interface]:
    """The IPv4 addresses of interface ``name``.

    :raise HostError: there is no such interface.
    """
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise HostError(f"the floating interface {name!r} does not exist")
    return _addresses(ipr, found[0])


def add_host_address(ipr: Any, name: str, address: ipaddress.IPv4Address) -> None:
    """Add ``address``/32 to interface ``name`` (the host then answers ARP for it there)."""
    index = ipr.link_lookup(ifname=name)[0]
    ipr.addr("add", index=index, address=str(address), prefixlen=32)


def del_host_address(ipr: Any, name: str, address: ipaddress.IPv4Address) -> None:
    """Remove ``address``/32 from interface ``name``; one already gone is no error."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return
    try:
        ipr.addr("del", index=found[0], address=str(address), prefixlen=32)
    except NetlinkError as exc:
        if exc.code != errno.EADDRNOTAVAIL:
            raise


def forget_connections(address: ipaddress.IPv4Address) -> int:
    """Remove the conntrack entries of connections translated to or from ``address`` (a
    floating IP): after a floating IP moves, a connection of the old mapping would otherwise
    keep reaching the old guest. How many were removed."""
    from pyroute2 import Conntrack

    removed = 0
    with Conntrack() as ct:
        for entry in list(ct.dump_entries()):
            if str(address) in (entry.tuple_orig.daddr, entry.tuple_reply.daddr):
                try:
                    ct.delete(entry)
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:
                        raise
                else:
                    removed += 1
    return removed
