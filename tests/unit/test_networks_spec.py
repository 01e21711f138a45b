"""NetworkSpec's rules, and the service's refusals naming the field each rule is about."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from corral.compute.networks import network_spec
from corral.errors import InvalidInput
from corral.spec.net import NetworkSpec, bridge_name


def test_a_nat_network_defaults_its_gateway_and_bridge() -> None:
    spec = NetworkSpec(name="lan", subnet="10.77.0.0/24")
    assert spec.kind == "nat" and spec.managed
    assert spec.gateway_address == ipaddress.IPv4Address("10.77.0.1")
    assert spec.bridge_ifname == bridge_name("lan") == "crb-lan"


def test_a_bridged_network_joins_the_host_bridge() -> None:
    spec = NetworkSpec(name="phys", kind="bridged", bridge="br0", vlan=10)
    assert not spec.managed and spec.bridge_ifname == "br0" and spec.vlan == 10


def test_overlaps_compares_subnets() -> None:
    a = network_spec(name="a", subnet="10.1.0.0/16")
    b = network_spec(name="b", subnet="10.1.2.0/24")
    c = network_spec(name="c", subnet="10.2.0.0/24")
    bridged = network_spec(name="d", kind="bridged", bridge="br0")
    assert a.overlaps(b) and b.overlaps(a)
    assert not a.overlaps(c) and not a.overlaps(bridged)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"subnet": "10.77.0.0/33"}, "subnet", "not an IPv4 subnet"),
        ({"subnet": "10.77.0.1/24"}, "subnet", "host bits"),
        ({"subnet": "10.77.0.0/30"}, "subnet", "/30"),
        ({"subnet": "10.0.0.0/8"}, "subnet", "/8"),
        ({"subnet": "8.8.8.0/24"}, "subnet", "not a private range"),
        ({"subnet": "127.0.0.0/24"}, "subnet", "not a private range"),
        ({}, "subnet", "needs a subnet"),
        ({"subnet": "10.77.0.0/24", "gateway": "10.78.0.1"}, "gateway", "not a host address"),
        ({"subnet": "10.77.0.0/24", "gateway": "10.77.0.255"}, "gateway", "not a host address"),
        ({"subnet": "10.77.0.0/24", "gateway": "nope"}, "gateway", "IPv4"),
        ({"kind": "bridged"}, "bridge", "needs the host bridge"),
        ({"kind": "bridged", "bridge": "br0", "subnet": "10.77.0.0/24"}, "subnet", "no subnet"),
        ({"kind": "bridged", "bridge": "br0", "uplink": "eth0"}, "uplink", "only a nat"),
        ({"subnet": "10.77.0.0/24", "bridge": "br0"}, "bridge", "of corral's own"),
        ({"kind": "isolated", "subnet": "10.77.0.0/24", "uplink": "e"}, "uplink", "no uplink"),
        ({"subnet": "10.77.0.0/24", "uplink": "eth 0"}, "uplink", "not an interface name"),
        ({"subnet": "10.77.0.0/24", "vlan": 5000}, "vlan", "4094"),
        ({"subnet": "10.77.0.0/24", "vlan": 0}, "vlan", "1"),
        ({"subnet": "10.77.0.0/24", "kind": "vxlan"}, "kind", "nat"),
    ],
)
def test_each_refusal_names_its_field(fields: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        network_spec(name="lan", **fields)
    assert refused.value.field == field, refused.value
    assert words in refused.value.reason


@pytest.mark.parametrize("name", ["Lan", "1lan", "a" * 12, "la_n", ""])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        network_spec(name=name, subnet="10.77.0.0/24")
    assert refused.value.field == "name"


def test_the_spec_is_frozen_and_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        NetworkSpec(name="lan", subnet="10.77.0.0/24", dhcp=True)  # type: ignore[call-arg]
    spec = network_spec(name="lan", subnet="10.77.0.0/24")
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]


def test_private_means_the_ranges_the_refusal_names() -> None:
    network_spec(name="cgn", subnet="100.64.0.0/24")
    for subnet in ("203.0.113.0/24", "198.18.0.0/24", "240.0.0.0/24"):
        with pytest.raises(InvalidInput):
            network_spec(name="odd", subnet=subnet)


def test_user_is_not_a_network_name() -> None:
    with pytest.raises(InvalidInput, match="reserved") as refused:
        network_spec(name="user", subnet="10.90.0.0/24")
    assert refused.value.field == "name"
