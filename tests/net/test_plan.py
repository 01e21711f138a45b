"""The pure parts of the host plan: checks against the host's interfaces, what is stale,
the nft script and dnsmasq's files."""

from __future__ import annotations

import ipaddress

import pytest

from corral.errors import Conflict
from corral.net.plan import (
    DnsmasqFiles,
    HostPlan,
    Lease,
    Port,
    alias,
    check_host,
    dhcp_hosts,
    dns_hosts,
    dnsmasq_conf,
    remove_ruleset,
    ruleset,
    stale_links,
)
from corral.spec.net import NetworkSpec

LAN = NetworkSpec(name="lan", kind="nat", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
ISO = NetworkSpec(name="iso", kind="isolated", subnet=ipaddress.IPv4Network("10.78.0.0/24"))
HOSTBR = NetworkSpec(name="phys", kind="bridged", bridge="br0")
PLAN = HostPlan(
    networks=(LAN, ISO),
    ports=(Port("crt-aaaaaaaaaaa", "lan", "52:54:00:00:00:01"),),
    uplinks={"lan": "up0"},
)


def test_a_foreign_interface_with_a_bridge_name_is_refused() -> None:
    with pytest.raises(Conflict, match="'crb-lan' exists and is not corral's"):
        check_host(PLAN, {"crb-lan": None, "eth0": None})
    with pytest.raises(Conflict, match="'crb-iso'"):
        check_host(PLAN, {"crb-iso": alias("lan")})


def test_corral_bridges_and_fresh_hosts_pass() -> None:
    check_host(PLAN, {"eth0": None})
    check_host(PLAN, {"crb-lan": "corral:lan", "crb-iso": "corral:iso"})


def test_a_bridged_network_needs_its_bridge() -> None:
    plan = HostPlan(networks=(HOSTBR,))
    with pytest.raises(Conflict, match="bridge 'br0' of bridged network 'phys' does not exist"):
        check_host(plan, {"eth0": None})
    check_host(plan, {"br0": None})


def test_stale_links_are_corral_s_only_taps_first() -> None:
    aliases = {
        "crb-lan": "corral:lan",
        "crb-old": "corral:old",
        "crt-aaaaaaaaaaa": "corral:lan",
        "crt-bbbbbbbbbbb": "corral:old",
        "br0": None,
        "eth0": "uplink",
    }
    taps = {"crt-aaaaaaaaaaa", "crt-bbbbbbbbbbb"}
    assert stale_links(PLAN, aliases, taps) == ["crt-bbbbbbbbbbb", "crb-old"]
    assert stale_links(HostPlan(networks=()), aliases, taps) == [
        "crt-aaaaaaaaaaa",
        "crt-bbbbbbbbbbb",
        "crb-lan",
        "crb-old",
    ]


def test_ruleset_masquerades_nat_only_and_replaces_the_table() -> None:
    script = ruleset(PLAN)
    assert script.startswith("table inet corral\ndelete table inet corral\n")
    assert 'oifname "up0" ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade' in script
    assert "10.78.0.0/24" not in script
    assert 'iifname "crb-iso" drop' in script
    assert remove_ruleset() == (
        "table inet corral\ndelete table inet corral\n"
        "table bridge corral\ndelete table bridge corral\n"
    )


def test_dnsmasq_has_no_upstream_and_routes_only_for_nat() -> None:
    files = DnsmasqFiles("/s/net/lan")
    conf = dnsmasq_conf(LAN, files)
    assert "no-resolv" in conf.splitlines()
    assert not any(line.startswith("server=") for line in conf.splitlines())
    assert "dhcp-option=option:router,10.77.0.1" in conf
    assert "dhcp-option=option:router\n" in dnsmasq_conf(ISO, DnsmasqFiles("/s/net/iso"))
    leases = (Lease("52:54:00:00:00:01", ipaddress.IPv4Address("10.77.0.10"), "vm1"),)
    assert dhcp_hosts(leases) == "52:54:00:00:00:01,10.77.0.10,vm1\n"
    assert "10.77.0.10 vm1.lan vm1\n" in dns_hosts(LAN, leases)
