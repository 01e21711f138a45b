"""Security groups, pure: the rule model and the CLI's shorthand, what is refused, and the nft
lines the rules become."""

from __future__ import annotations

import ipaddress

import pytest

from corral.compute.security import make_rule
from corral.errors import InvalidInput
from corral.net.plan import HostPlan, remove_ruleset, ruleset
from corral.net.security import (
    Guard,
    Rule,
    SecurityPlan,
    bridge_table,
    group_key,
    inet_chains,
    rule_line,
)
from corral.spec.net import NetworkSpec
from corral.spec.security import parse_allow, parse_ports

A = ipaddress.IPv4Address("10.77.0.10")
B = ipaddress.IPv4Address("10.77.0.11")
WEB = "0b0c6a1e2f3a4b5c8d9e0f1a2b3c4d5e"
ADMIN = "1b0c6a1e2f3a4b5c8d9e0f1a2b3c4d5e"


@pytest.mark.parametrize(
    ("text", "protocol", "ports"),
    [
        ("tcp/80", "tcp", (80, 80)),
        ("udp/53", "udp", (53, 53)),
        ("tcp/8000-8100", "tcp", (8000, 8100)),
        ("TCP/22", "tcp", (22, 22)),
        ("icmp", "icmp", (None, None)),
        ("any", "any", (None, None)),
        ("tcp", "tcp", (None, None)),
    ],
)
def test_shorthand(text: str, protocol: str, ports: tuple[int | None, int | None]) -> None:
    rule = parse_allow(text)
    assert (rule.protocol, rule.port_min, rule.port_max, rule.direction) == (
        protocol,
        *ports,
        "in",
    )
    assert parse_allow(rule.shorthand) == rule


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tcp/8100-8000", "impossible port range"),
        ("tcp/0", "not in 1-65535"),
        ("udp/65536", "not in 1-65535"),
        ("tcp/http", "is not a port range"),
        ("icmp/8", "for tcp and udp"),
        ("gre", "is not one of"),
    ],
)
def test_bad_shorthand(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_allow(text)


def test_peers() -> None:
    assert parse_allow("tcp/22", cidr="10.1.2.3/8").cidr == ipaddress.IPv4Network("10.0.0.0/8")
    assert parse_allow("tcp/22", group="bastion").group == "bastion"
    with pytest.raises(ValueError, match="not both"):
        parse_allow("tcp/22", cidr="10.0.0.0/8", group="bastion")
    with pytest.raises(ValueError, match="not an IPv4 CIDR"):
        parse_allow("tcp/22", cidr="fd00::/8")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ports": "90-80"}, "ports"),
        ({"ports": "99999"}, "ports"),
        ({"protocol": "icmp", "ports": "1"}, "ports"),
        ({"cidr": "10.0.0.0/33"}, "cidr"),
        ({"cidr": "10.0.0.0/8", "group": "g"}, "peer"),
        ({"group": "Bad Name"}, "group"),
        ({"direction": "sideways"}, "direction"),
    ],
)
def test_make_rule_names_the_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        make_rule(**fields)
    assert refused.value.field == field


def test_parse_ports() -> None:
    assert parse_ports("1-65535") == (1, 65535)
    with pytest.raises(ValueError, match="impossible"):
        parse_ports("2-1")


def test_rule_lines() -> None:
    assert rule_line(Rule("in", "tcp", 22, 22)) == "meta l4proto tcp th dport 22 return"
    assert (
        rule_line(Rule("in", "udp", 8000, 8100, cidr=ipaddress.IPv4Network("10.0.0.0/8")))
        == "meta l4proto udp th dport 8000-8100 ip saddr 10.0.0.0/8 return"
    )
    assert (
        rule_line(Rule("out", "icmp", group=WEB)) == f"meta l4proto icmp ip daddr @sg_{WEB} return"
    )
    assert rule_line(Rule("in", "any")) == "return"
    with pytest.raises(ValueError):
        rule_line(Rule("in", "any", group='x" ; flush ruleset'))


def _plan(out: bool = False) -> SecurityPlan:
    rules = (Rule("in", "tcp", 22, 22, group=ADMIN),)
    if out:
        rules += (Rule("out", "udp", 53, 53),)
    return SecurityPlan(
        groups={WEB: rules, ADMIN: ()},
        guards=(
            Guard("crt-0000000000a", "52:54:00:00:00:0a", A, (WEB,)),
            Guard("crt-0000000000b", "52:54:00:00:00:0b", B, (ADMIN,)),
        ),
    )


def test_chains_of_guarded_ports() -> None:
    lines = "\n".join(inet_chains(_plan()))
    assert f"set sg_{ADMIN} {{ type ipv4_addr; elements = {{ 10.77.0.11 }}; }}" in lines
    assert "ip daddr 10.77.0.10 jump in_crt_0000000000a" in lines
    assert "ip saddr 10.77.0.10 jump" not in lines  # no out rules: outbound unfiltered
    # each group's inbound rules once, in its own chain, jumped to from each port it guards
    assert f"meta l4proto tcp th dport 22 ip saddr @sg_{ADMIN} accept" in lines
    assert lines.count(f"ip saddr @sg_{ADMIN} accept") == 1
    assert "jump ingress_" in lines
    assert "udp sport 67 udp dport 68 accept" in lines
    out = "\n".join(inet_chains(_plan(out=True)))
    assert "ip saddr 10.77.0.10 jump out_crt_0000000000a" in out
    assert "meta l4proto udp th dport 53 return" in out


def test_no_guards_no_chains_and_the_bridge_table_goes() -> None:
    assert inet_chains(SecurityPlan()) == []
    assert bridge_table(SecurityPlan()) == ["table bridge corral", "delete table bridge corral"]
    assert "delete table bridge corral" in remove_ruleset()


def test_anti_spoofing() -> None:
    lines = "\n".join(bridge_table(_plan()))
    assert 'iifname "crt-0000000000a" jump spoof_crt_0000000000a' in lines
    assert "ether saddr != 52:54:00:00:00:0a drop" in lines
    assert "arp saddr ip != { 0.0.0.0, 10.77.0.10 } drop" in lines
    assert "ether type ip ip saddr != 10.77.0.10 drop" in lines
    with pytest.raises(ValueError):
        bridge_table(SecurityPlan({}, (Guard("crt-1", "52:54:00:00:00:0A; drop", A, ()),)))


def test_the_ruleset_holds_both_tables_in_one_script() -> None:
    lan = NetworkSpec(name="lan", kind="isolated", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
    script = ruleset(HostPlan(networks=(lan,), security=_plan()))
    assert script.index("table inet corral {") < script.index("table bridge corral {")
    assert "chain guard_forward" in script and "chain guard_output" in script


def test_group_key() -> None:
    assert group_key("0B0C6A1E-2F3A-4B5C-8D9E-0F1A2B3C4D5E") == WEB
    with pytest.raises(ValueError):
        group_key("web; flush")
