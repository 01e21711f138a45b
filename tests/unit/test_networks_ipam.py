"""Address management (corral.net.ipam): free addresses and MACs, fixed addresses, subnets."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from corral.errors import Conflict, InvalidInput
from corral.net.ipam import (
    MAC_PREFIX,
    MAC_TRIES,
    check_address,
    check_subnets,
    free_address,
    free_mac,
)
from corral.spec.net import NetworkSpec

A = ipaddress.IPv4Address


def _spec(name: str = "lan", subnet: str = "10.77.0.0/29", **extra: object) -> NetworkSpec:
    return NetworkSpec.model_validate({"name": name, "subnet": subnet, **extra})


def test_free_address_skips_the_gateway_and_what_is_taken() -> None:
    spec = _spec()
    assert free_address(spec, []) == A("10.77.0.2")
    assert free_address(spec, [A("10.77.0.2"), A("10.77.0.4")]) == A("10.77.0.3")


def test_a_29_holds_five_guests_then_refuses_naming_the_network() -> None:
    spec = _spec()
    taken: list[ipaddress.IPv4Address] = []
    for _ in range(5):
        taken.append(free_address(spec, taken))
    assert taken == [A(f"10.77.0.{i}") for i in range(2, 7)]
    with pytest.raises(Conflict, match="network 'lan' has no free address: 5 guests"):
        free_address(spec, taken)


def test_a_gateway_elsewhere_leaves_the_first_address_free() -> None:
    spec = _spec(gateway="10.77.0.6")
    assert free_address(spec, []) == A("10.77.0.1")
    assert free_address(spec, [A(f"10.77.0.{i}") for i in range(1, 5)]) == A("10.77.0.5")


@pytest.mark.parametrize("address", ["10.77.0.0", "10.77.0.7", "10.78.0.2", "10.77.0.1"])
def test_check_address_refuses_what_is_no_guest_address(address: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_address(_spec(), A(address), [])
    assert refused.value.field == "ip"


def test_check_address_refuses_a_taken_one_and_accepts_a_free_one() -> None:
    check_address(_spec(), A("10.77.0.3"), [A("10.77.0.2")])
    with pytest.raises(Conflict, match=r"10\.77\.0\.2 of network 'lan' is taken"):
        check_address(_spec(), A("10.77.0.2"), [A("10.77.0.2")])


def test_free_mac_is_locally_administered_and_avoids_taken_ones() -> None:
    draws = itertools.chain([b"\x00\x00\x01", b"\x00\x00\x01"], itertools.repeat(b"\xab\xcd\xef"))
    mac = free_mac({f"{MAC_PREFIX}:00:00:01"}, lambda n: next(draws))
    assert mac == f"{MAC_PREFIX}:ab:cd:ef"
    assert int(MAC_PREFIX[:2], 16) & 0x02 and not int(MAC_PREFIX[:2], 16) & 0x01


def test_free_mac_gives_up_after_its_tries() -> None:
    calls = []

    def same(n: int) -> bytes:
        calls.append(n)
        return b"\x00\x00\x01"

    with pytest.raises(Conflict, match="no free MAC"):
        free_mac({f"{MAC_PREFIX}:00:00:01"}, same)
    assert len(calls) == MAC_TRIES


def test_random_macs_are_distinct() -> None:
    taken: set[str] = set()
    for _ in range(200):
        taken.add(free_mac(taken))
    assert len(taken) == 200 and all(m.startswith(MAC_PREFIX + ":") for m in taken)


def test_check_subnets_names_the_overlapping_network() -> None:
    lan = _spec("lan", "10.77.0.0/24")
    others = [_spec("dmz", "10.78.0.0/24"), _spec("big", "10.77.0.0/16")]
    with pytest.raises(Conflict, match=r"overlaps network 'big' \(10.77.0.0/16\)"):
        check_subnets(lan, others)
    check_subnets(lan, [others[0], lan])  # itself and a disjoint one
