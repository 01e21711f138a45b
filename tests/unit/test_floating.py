"""Floating IPs without the host: the pool in ``corral.toml``, allocation, the nft rules and
their place in corral's table (checked by nft itself, in a namespace of the test's)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.compute.network_host import FloatingFacts, PortFacts, host_plan
from corral.compute.settings import NetworkSettings, load_settings
from corral.config import Home
from corral.errors import Conflict, InvalidInput
from corral.net.floating import FloatingMapping, free_address, pool_addresses, rules
from corral.net.plan import HostPlan, ruleset
from corral.spec.net import NetworkSpec

POOL = ipaddress.IPv4Network("203.0.113.0/29")
A = ipaddress.IPv4Address
LAN = NetworkSpec(name="lan", kind="nat", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
VM1 = "11111111-1111-1111-1111-111111111111"


def _settings(tmp_path: Path, text: str) -> NetworkSettings:
    (tmp_path / "corral.toml").write_text(text)
    return load_settings(Home(tmp_path)).network


def test_the_pool_and_interface_are_read_from_corral_toml(tmp_path: Path) -> None:
    net = _settings(
        tmp_path, '[network]\nfloating_pool = "203.0.113.0/28"\nfloating_interface = "up0"\n'
    )
    assert net.floating_pool == ipaddress.IPv4Network("203.0.113.0/28")
    assert net.floating_interface == "up0"
    assert _settings(tmp_path, "[network]\n").floating_pool is None


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('floating_pool = "203.0.113.1/28"', "network.floating_pool"),
        ('floating_pool = "banana"', "network.floating_pool"),
        ('floating_interface = "eth0; drop"', "network.floating_interface"),
        ('floating_interface = "a-name-far-too-long"', "network.floating_interface"),
    ],
)
def test_a_bad_pool_or_interface_names_the_file_and_key(
    tmp_path: Path, line: str, key: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        _settings(tmp_path, f"[network]\n{line}\n")
    assert caught.value.field == f"{tmp_path / 'corral.toml'}: {key}"


def test_allocation_takes_the_lowest_free_host_address() -> None:
    assert list(pool_addresses(POOL)) == [A(f"203.0.113.{i}") for i in range(1, 7)]
    assert list(pool_addresses(ipaddress.IPv4Network("203.0.113.9/32"))) == [A("203.0.113.9")]
    assert free_address(POOL, set()) == A("203.0.113.1")
    assert free_address(POOL, {A("203.0.113.1"), A("203.0.113.3")}) == A("203.0.113.2")


def test_an_exhausted_or_missing_pool_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="exhausted"):
        free_address(POOL, set(pool_addresses(POOL)))
    with pytest.raises(Conflict, match="floating_pool"):
        free_address(None, set())


def test_rules_translate_both_ways() -> None:
    r = rules([FloatingMapping(A("203.0.113.1"), A("10.77.0.2"))], "up0")
    assert r.prerouting == ("ip daddr 203.0.113.1 dnat ip to 10.77.0.2",)
    assert r.output == r.prerouting
    assert r.postrouting == ('ip saddr 10.77.0.2 oifname "up0" snat ip to 203.0.113.1',)
    assert "ip daddr 10.77.0.2 ct status dnat accept" in r.forward
    assert rules([FloatingMapping(A("203.0.113.1"), A("10.77.0.2"))], None).prerouting == ()
    with pytest.raises(ValueError, match="mapped twice"):
        rules(
            [
                FloatingMapping(A("203.0.113.1"), A("10.77.0.2")),
                FloatingMapping(A("203.0.113.2"), A("10.77.0.2")),
            ],
            "up0",
        )
    with pytest.raises(ValueError, match="interface name"):
        rules([FloatingMapping(A("203.0.113.1"), A("10.77.0.2"))], 'up0" accept')


def _plan() -> HostPlan:
    port = PortFacts("p1", "lan", "52:54:00:00:00:01", "10.77.0.2", "vm1", VM1, "net0")
    facts = FloatingFacts(
        addresses=("203.0.113.2", "203.0.113.1"), associated=(("203.0.113.1", "p1"),)
    )
    return host_plan([LAN], [port], "up0", facts)


def test_host_plan_maps_associated_addresses_to_their_ports() -> None:
    plan = _plan()
    assert plan.floating == (FloatingMapping(A("203.0.113.1"), A("10.77.0.2")),)
    assert plan.floating_addresses == (A("203.0.113.1"), A("203.0.113.2"))
    assert plan.floating_interface == "up0"
    assert host_plan([LAN], [], "up0").floating_addresses == ()


def test_the_snat_comes_before_the_masquerade_and_the_accepts_before_the_drops() -> None:
    script = ruleset(_plan())
    assert script.index("snat ip to 203.0.113.1") < script.index("masquerade")
    assert script.index("ct status dnat accept") < script.index('iifname "crb-lan" drop')
    assert "chain prerouting" in script and "chain output" in script


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="nft -c needs root and nft"
)
def test_nft_accepts_the_ruleset() -> None:
    from tests.netns import namespace

    with namespace("f") as ns:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"],
            input=ruleset(_plan()),
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
