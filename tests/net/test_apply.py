"""The network apply layer on real kernel networking, inside namespaces the tests make.

``host`` is where corral applies; ``outside`` is a nat network's uplink peer (a veth with an
address); ``c1`` and ``c2`` are DHCP clients plugged (by a veth) into the nat and the
isolated network's bridges. No traffic leaves these namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.errors import Conflict, HostError
from corral.net import apply as net_apply
from corral.net import dnsmasq, links
from corral.net.plan import HostPlan, Lease, Port
from corral.spec.net import NetworkSpec
from tests.netns import namespace, run_in, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LAN = NetworkSpec(name="lan", kind="nat", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
ISO = NetworkSpec(name="iso", kind="isolated", subnet=ipaddress.IPv4Network("10.78.0.0/24"))
MAC1 = "52:54:00:00:00:01"
MAC2 = "52:54:00:00:00:02"
TAP1 = "crt-aaaaaaaaaaa"
TAP2 = "crt-bbbbbbbbbbb"
OUTSIDE = "10.200.0.2"
PLAN = HostPlan(
    networks=(LAN, ISO),
    ports=(
        Port(TAP1, "lan", "52:54:00:00:00:11"),
        Port(TAP2, "iso", "52:54:00:00:00:12", up=False),
    ),
    leases={
        "lan": (Lease(MAC1, ipaddress.IPv4Address("10.77.0.10"), "vm1"),),
        "iso": (Lease(MAC2, ipaddress.IPv4Address("10.78.0.10"), "vm2"),),
    },
    uplinks={"lan": "up0"},
)
#: busybox udhcpc's script: configure the lease, note the address.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then ip route add default via "$router"; fi
    echo "$ip" > "$interface.lease"
    ;;
esac
"""


@dataclass(frozen=True)
class World:
    host: str
    outside: str
    c1: str
    c2: str
    state: Path
    script: Path


def _apply(state: Path, plan: HostPlan, previous: HostPlan | None = None) -> None:
    net_apply.apply(plan, state, previous)


def _teardown(state: Path) -> None:
    net_apply.teardown(state)


def _links(ns: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["ip", "-j", "-d", "-n", ns, "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def _snapshot(world: World) -> tuple[object, ...]:
    """What an idempotent apply must leave exactly as it was."""
    links = {
        name: (link.get("ifalias"), link.get("master"), link.get("operstate"), link.get("mtu"))
        for name, link in _links(world.host).items()
    }
    rules = sh(world.host, "nft list ruleset").stdout
    daemons = {
        net: dnsmasq.running(net_apply.dnsmasq_files(world.state, net)) for net in ("lan", "iso")
    }
    files = {
        p.relative_to(world.state): p.stat().st_mtime_ns
        for p in world.state.rglob("*")
        if p.is_file() and p.name not in ("leases", "dnsmasq.log")
    }
    return links, rules, daemons, files


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with (
        namespace("h") as host,
        namespace("o") as outside,
        namespace("a") as c1,
        namespace("b") as c2,
        tempfile.TemporaryDirectory(prefix="crn-", dir="/tmp") as tmp,
    ):
        state = Path(tmp)
        script = state / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        sh(host, f"ip link add up0 type veth peer name out0 netns {outside}")
        sh(host, "ip addr add 10.200.0.1/24 dev up0 && ip link set up0 up")
        sh(outside, f"ip addr add {OUTSIDE}/24 dev out0 && ip link set out0 up")
        for port, client, mac in (("cl1", c1, MAC1), ("cl2", c2, MAC2)):
            sh(host, f"ip link add {port} type veth peer name eth0 netns {client}")
            sh(client, f"ip link set eth0 address {mac} && ip link set eth0 up")
        run_in(host, _apply, state, PLAN)
        try:
            sh(host, "ip link set cl1 master crb-lan up && ip link set cl2 master crb-iso up")
            yield World(host, outside, c1, c2, state, script)
        finally:
            run_in(host, _teardown, state)


def _dhcp(world: World, client: str) -> str:
    sh(client, f"cd {world.state} && busybox udhcpc -i eth0 -n -q -f -t 5 -T 1 -s {world.script}")
    return (world.state / "eth0.lease").read_text().strip()


def test_bridges_and_taps_are_corral_s(world: World) -> None:
    links = _links(world.host)
    assert links["crb-lan"]["ifalias"] == "corral:lan"
    assert links["crb-iso"]["ifalias"] == "corral:iso"
    assert links[TAP1]["master"] == "crb-lan"
    assert links[TAP1]["ifalias"] == "corral:lan"
    assert links[TAP2]["master"] == "crb-iso"
    assert "UP" in links[TAP1]["flags"]  # type: ignore[operator]
    assert "UP" not in links[TAP2]["flags"]  # type: ignore[operator]
    tun = sh(world.host, "ip tuntap show").stdout
    assert f"{TAP1}: tap vnet_hdr persist" in tun
    addrs = sh(world.host, "ip -4 -o addr show dev crb-lan").stdout
    assert "10.77.0.1/24" in addrs
    assert sh(world.host, "cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


def test_nft_table_matches_the_plan(world: World) -> None:
    table = sh(world.host, "nft list table inet corral").stdout
    assert 'oifname "up0" ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 masquerade' in table
    assert 'iifname "crb-iso" drop' in table
    assert "10.78.0.0/24" not in table


def test_nat_client_gets_its_lease_its_name_and_a_way_out(world: World) -> None:
    assert _dhcp(world, world.c1) == "10.77.0.10"
    answer = sh(world.c1, "busybox nslookup vm1.lan 10.77.0.1").stdout
    assert "10.77.0.10" in answer
    ping = sh(world.c1, f"busybox ping -c1 -W3 {OUTSIDE}", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_isolated_client_gets_its_lease_and_no_way_out(world: World) -> None:
    assert _dhcp(world, world.c2) == "10.78.0.10"
    assert "default" not in sh(world.c2, "ip route").stdout
    sh(world.c2, "ip route add default via 10.78.0.1")
    assert sh(world.c2, "busybox ping -c1 -W1 10.78.0.1", check=False).returncode == 0
    assert sh(world.c2, f"busybox ping -c1 -W2 {OUTSIDE}", check=False).returncode != 0


def test_applying_twice_changes_nothing(world: World) -> None:
    before = _snapshot(world)
    run_in(world.host, _apply, world.state, PLAN)
    assert _snapshot(world) == before


def _nft_handles(name: str) -> str:
    """corral's table with rule handles: they change with every reload."""
    return sh(name, "nft -a list table inet corral").stdout


def test_an_unchanged_plan_leaves_nftables_alone_and_puts_back_a_removed_table(
    world: World,
) -> None:
    before = _nft_handles(world.host)
    run_in(world.host, _apply, world.state, PLAN)
    assert _nft_handles(world.host) == before  # not reloaded: the same rule handles
    sh(world.host, "nft delete table inet corral")
    run_in(world.host, _apply, world.state, PLAN)
    again = _nft_handles(world.host)
    assert "masquerade" in again and again != before  # put back by a new load


def test_a_dead_dnsmasq_is_restarted(world: World) -> None:
    files = net_apply.dnsmasq_files(world.state, "lan")
    daemon = dnsmasq.running(files)
    assert daemon is not None
    os.kill(daemon.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while daemon.alive:
        assert time.monotonic() < deadline, "dnsmasq did not die"
        time.sleep(0.02)
    assert dnsmasq.running(files) is None
    run_in(world.host, _apply, world.state, PLAN)
    again = dnsmasq.running(files)
    assert again is not None and again.pid != daemon.pid
    assert "10.77.0.10" in sh(world.c1, "busybox nslookup vm1.lan 10.77.0.1").stdout


def test_a_changed_host_list_is_served_without_a_restart(world: World) -> None:
    files = net_apply.dnsmasq_files(world.state, "lan")
    daemon = dnsmasq.running(files)
    leases = {
        **PLAN.leases,
        "lan": (
            *PLAN.leases["lan"],
            Lease("52:54:00:00:00:21", ipaddress.IPv4Address("10.77.0.20"), "vm3"),
        ),
    }
    changed = HostPlan(PLAN.networks, PLAN.ports, leases, PLAN.uplinks)
    run_in(world.host, _apply, world.state, changed)
    try:
        assert dnsmasq.running(files) == daemon
        deadline = time.monotonic() + 10
        while (
            "10.77.0.20"
            not in sh(world.c1, "busybox nslookup vm3.lan 10.77.0.1", check=False).stdout
        ):
            assert time.monotonic() < deadline, "vm3.lan never resolved after SIGHUP"
    finally:
        run_in(world.host, _apply, world.state, PLAN)


def test_a_foreign_bridge_name_is_refused_and_nothing_is_made() -> None:
    with namespace("f") as ns, tempfile.TemporaryDirectory(prefix="crn-", dir="/tmp") as tmp:
        sh(ns, "ip link add crb-lan type bridge")
        before = _links(ns)
        with pytest.raises(Conflict, match="'crb-lan' exists and is not corral's"):
            run_in(ns, _apply, Path(tmp), PLAN)
        assert _links(ns).keys() == before.keys()
        assert not (Path(tmp) / "net").exists()


def test_a_failure_part_way_is_rolled_back() -> None:
    with namespace("r") as ns, tempfile.TemporaryDirectory(prefix="crn-", dir="/tmp") as tmp:
        state = Path(tmp)
        first = HostPlan(networks=(LAN,), leases={"lan": PLAN.leases["lan"]})
        run_in(ns, _apply, state, first)
        before = set(_links(ns))
        daemon = dnsmasq.running(net_apply.dnsmasq_files(state, "lan"))
        # The isolated network's dnsmasq directory cannot be made: its dnsmasq fails to start
        # after its bridge and tap were created.
        (state / "net" / "iso").write_text("in the way")
        with pytest.raises(FileExistsError):
            run_in(ns, _apply, state, PLAN, first)
        assert set(_links(ns)) == before
        assert dnsmasq.running(net_apply.dnsmasq_files(state, "lan")) == daemon
        assert "10.78.0.0/24" not in sh(ns, "nft list table inet corral").stdout
        (state / "net" / "iso").unlink()
        run_in(ns, _teardown, state)


def _processes(ns: str) -> set[str]:
    """The processes that run in namespace ``ns``."""
    listing = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
    )
    return set(listing.stdout.split())


def test_teardown_leaves_the_host_as_it_was() -> None:
    with namespace("t") as ns, tempfile.TemporaryDirectory(prefix="crn-", dir="/tmp") as tmp:
        state = Path(tmp)
        links, rules, pids = _links(ns), sh(ns, "nft list ruleset").stdout, _processes(ns)
        run_in(ns, _apply, state, PLAN)
        assert set(_links(ns)) > set(links)
        assert _processes(ns) > pids
        run_in(ns, _teardown, state)
        assert _links(ns) == links
        assert sh(ns, "nft list ruleset").stdout == rules
        assert _processes(ns) == pids
        assert list(state.iterdir()) == []


def test_a_vlan_network_is_filtered_or_refused_whole() -> None:
    """Where the kernel's bridges filter VLANs, the tap gets the VLAN as untagged PVID;
    where they do not, the apply fails with a HostError and leaves nothing behind."""
    vlan = NetworkSpec(
        name="vl", kind="isolated", subnet=ipaddress.IPv4Network("10.79.0.0/24"), vlan=42
    )
    plan = HostPlan(networks=(vlan,), ports=(Port(TAP1, "vl", MAC1),))
    with namespace("v") as ns, tempfile.TemporaryDirectory(prefix="crn-", dir="/tmp") as tmp:
        before = set(_links(ns))
        try:
            run_in(ns, _apply, Path(tmp), plan)
        except HostError as exc:
            assert "VLAN" in str(exc)
            assert set(_links(ns)) == before
            assert dnsmasq.running(net_apply.dnsmasq_files(Path(tmp), "vl")) is None
        else:
            shown = sh(ns, f"bridge vlan show dev {TAP1}").stdout
            assert "42 PVID Egress Untagged" in shown
        run_in(ns, _teardown, Path(tmp))
        assert set(_links(ns)) == before


def _host_view() -> tuple[str | None, set[str], dict[str, list[ipaddress.IPv4Network]]]:
    return links.default_uplink(), links.host_interfaces(), links.host_subnets()


def test_host_interfaces_subnets_and_default_uplink() -> None:
    with namespace("u") as ns:
        sh(ns, "ip link add up9 type veth peer name up9p && ip addr add 10.201.0.1/24 dev up9")
        sh(ns, "ip link set up9p up && ip link set up9 up")
        uplink, names, subnets = run_in(ns, _host_view)
        assert uplink is None
        assert {"lo", "up9"} <= names
        assert subnets["up9"] == [ipaddress.IPv4Network("10.201.0.0/24")]
        sh(ns, "ip route add default via 10.201.0.2 dev up9")
        assert run_in(ns, _host_view)[0] == "up9"
