"""The pure parts of the network service: who may run networks, what the host has, how
many addresses are free, and the host plan made from networks and ports."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from corral.compute.network_host import PortFacts, host_plan
from corral.compute.networks import check_host, check_system, free_count, network_spec
from corral.errors import Conflict, InvalidInput
from corral.net.plan import Lease, nic_tap

VM_A = uuid.UUID("6f1c2a52-1f0e-4c3e-9a4b-000000000001")
VM_B = uuid.UUID("6f1c2a52-1f0e-4c3e-9a4b-000000000002")

LAN = network_spec(name="lan", subnet="10.77.0.0/24")
ISO = network_spec(name="iso", kind="isolated", subnet="10.78.0.0/29")
PHYS = network_spec(name="phys", kind="bridged", bridge="br0")


def test_only_root_runs_virtual_networks() -> None:
    check_system(0)
    with pytest.raises(Conflict) as refused:
        check_system(1000)
    assert refused.value.message == (
        "virtual networks need corrald running as root; this corral runs as uid 1000 and "
        "offers user-mode networking only"
    )


def test_a_subnet_of_the_host_is_refused() -> None:
    with pytest.raises(Conflict, match=r"overlaps the host's own network 10\.77\.0\.0/16"):
        check_host(LAN, ["fe80::/64", "192.168.1.0/24", "10.77.3.4/16"], {"eth0"})
    check_host(LAN, ["192.168.1.0/24", "garbage"], {"eth0"})


def test_interfaces_of_the_host_are_checked() -> None:
    with pytest.raises(Conflict, match="already has an interface named crb-lan"):
        check_host(LAN, [], {"crb-lan"})
    with pytest.raises(InvalidInput) as refused:
        check_host(PHYS, [], {"eth0"})
    assert refused.value.field == "bridge"
    check_host(PHYS, [], {"br0"})
    with pytest.raises(InvalidInput) as refused:
        check_host(network_spec(name="n", subnet="10.9.0.0/24", uplink="eth9"), [], {"eth0"})
    assert refused.value.field == "uplink"


def test_free_count() -> None:
    assert free_count(LAN, 0) == 253
    assert free_count(ISO, 2) == 3
    assert free_count(ISO, 9) == 0
    assert free_count(PHYS, 4) is None


def test_the_host_plan_has_taps_leases_and_uplinks() -> None:
    ports = [
        PortFacts("p1", "lan", "52:54:00:00:00:01", "10.77.0.2", "a", str(VM_A), "net0"),
        PortFacts("p2", "phys", "52:54:00:00:00:02", None, "b", str(VM_B), "net1"),
    ]
    plan = host_plan([PHYS, LAN, ISO], ports, "eth0")
    assert [n.name for n in plan.networks] == ["iso", "lan", "phys"]
    # named as QEMU's command line names them: after the VM's UUID and the NIC's name
    assert [p.tap for p in plan.ports] == [nic_tap(VM_A, "net0"), nic_tap(VM_B, "net1")]
    assert plan.ports[1].network == "phys"
    assert plan.leases == {
        "iso": (),
        "lan": (Lease("52:54:00:00:00:01", ipaddress.IPv4Address("10.77.0.2"), "a"),),
    }
    assert plan.uplinks == {"lan": "eth0"}


def test_a_nat_network_keeps_its_own_uplink_and_none_without_a_default() -> None:
    own = network_spec(name="out", subnet="10.80.0.0/24", uplink="veth1")
    assert host_plan([own, LAN], [], None).uplinks == {"out": "veth1"}
