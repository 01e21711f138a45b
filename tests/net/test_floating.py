"""Floating IPs on real kernel networking, inside namespaces the tests make.

``host`` is where corral applies: a nat network ``lan`` and the floating pool on ``up0``, a
veth to ``client``, which routes the pool through the host. ``g1`` and ``g2`` stand in for
guests (veths into the bridge, with the addresses their leases give them), each running a
tiny TCP server that answers with its name and the address it sees. No traffic leaves these
namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.net import apply as net_apply
from corral.net import links
from corral.net.floating import FloatingMapping
from corral.net.plan import HostPlan, Lease
from corral.spec.net import NetworkSpec
from tests.netns import namespace, run_in, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

A = ipaddress.IPv4Address
LAN = NetworkSpec(name="lan", kind="nat", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
FIP = A("203.0.113.1")
SPARE = A("203.0.113.2")
GUESTS = {"g1": A("10.77.0.10"), "g2": A("10.77.0.11")}
CLIENT = "10.200.0.2"
PORT = 8080
#: A TCP server that answers each connection with its name and the peer's address.
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{sys.argv[1]} {peer[0]}\\n".encode()); c.close()
"""
#: A client: what a server at ``argv[1]:argv[2]`` answers, or ``unreachable``.
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        print(c.recv(100).decode().strip())
except OSError as exc:
    print("unreachable", type(exc).__name__)
"""


def _plan(
    guest: str | None, allocated: tuple[ipaddress.IPv4Address, ...] = (FIP, SPARE)
) -> HostPlan:
    leases = tuple(
        Lease(f"52:54:00:00:01:0{i}", address, name)
        for i, (name, address) in enumerate(GUESTS.items())
    )
    mappings = () if guest is None else (FloatingMapping(FIP, GUESTS[guest]),)
    return HostPlan(
        networks=(LAN,),
        leases={"lan": leases},
        uplinks={"lan": "up0"},
        floating=mappings,
        floating_addresses=allocated,
        floating_interface="up0",
    )


@dataclass(frozen=True)
class World:
    host: str
    client: str
    guests: dict[str, str]
    state: Path


def _server(ns: str, name: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"  # it listens
    return proc


def _connect(ns: str, address: object, port: int = PORT) -> str:
    return sh(ns, f"{sys.executable} -c '{CONNECT}' {address} {port}").stdout.strip()


def _apply(state: Path, plan: HostPlan) -> None:
    net_apply.apply(plan, state)


def _teardown(state: Path) -> None:
    net_apply.teardown(state)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with (
        namespace("h") as host,
        namespace("c") as client,
        namespace("1") as g1,
        namespace("2") as g2,
        tempfile.TemporaryDirectory(prefix="crf-", dir="/tmp") as tmp,
    ):
        state = Path(tmp)
        sh(host, f"ip link add up0 type veth peer name out0 netns {client}")
        sh(host, "ip addr add 10.200.0.1/24 dev up0 && ip link set up0 up")
        sh(client, f"ip addr add {CLIENT}/24 dev out0 && ip link set out0 up")
        sh(client, "ip route add 203.0.113.0/28 via 10.200.0.1")
        guests = {"g1": g1, "g2": g2}
        run_in(host, _apply, state, _plan("g1"))
        servers = [_server(client, "client", PORT)]
        try:
            for name, ns in guests.items():
                sh(host, f"ip link add v{name} type veth peer name eth0 netns {ns}")
                sh(host, f"ip link set v{name} master crb-lan up")
                sh(ns, f"ip addr add {GUESTS[name]}/24 dev eth0 && ip link set eth0 up")
                sh(ns, "ip route add default via 10.77.0.1")
                servers.append(_server(ns, name, PORT))
            yield World(host, client, guests, state)
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
            run_in(host, _teardown, state)


def _addresses(ns: str, ifname: str) -> str:
    return sh(ns, f"ip -4 -o addr show dev {ifname}").stdout


def test_the_floating_addresses_live_on_the_floating_interface(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan("g1"))
    have = _addresses(world.host, "up0")
    assert f"{FIP}/32" in have and f"{SPARE}/32" in have
    assert "10.200.0.1/24" in have


def test_the_client_reaches_the_associated_guest_and_it_sees_the_client(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan("g1"))
    assert _connect(world.client, FIP) == f"g1 {CLIENT}"


def test_the_guest_s_own_connections_leave_from_the_floating_address(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan("g1"))
    assert _connect(world.guests["g1"], CLIENT) == f"client {FIP}"
    # The other guest is only masqueraded, behind the uplink's own address.
    assert _connect(world.guests["g2"], CLIENT) == "client 10.200.0.1"


def test_the_host_s_own_connections_to_the_floating_address_reach_the_guest(
    world: World,
) -> None:
    run_in(world.host, _apply, world.state, _plan("g1"))
    assert _connect(world.host, FIP).startswith("g1 ")


def test_moving_the_address_reaches_the_second_guest(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan("g1"))
    assert _connect(world.client, FIP) == f"g1 {CLIENT}"
    run_in(world.host, _apply, world.state, _plan("g2"))
    assert _connect(world.client, FIP) == f"g2 {CLIENT}"
    assert _connect(world.guests["g2"], CLIENT) == f"client {FIP}"
    assert _connect(world.guests["g1"], CLIENT) == "client 10.200.0.1"


def test_disassociated_nothing_reaches_a_guest(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan(None))
    assert _connect(world.client, FIP).startswith("unreachable")
    # A guest is not reachable by its own address from outside either.
    assert _connect(world.client, GUESTS["g1"]).startswith("unreachable")


def test_a_released_address_leaves_the_interface(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan(None, (FIP,)))
    have = _addresses(world.host, "up0")
    assert f"{FIP}/32" in have and f"{SPARE}/32" not in have
    run_in(world.host, _apply, world.state, _plan("g1"))


def test_an_address_corral_did_not_add_is_left_alone(world: World) -> None:
    sh(world.host, "ip addr add 203.0.113.9/32 dev up0")
    try:
        run_in(world.host, _apply, world.state, _plan(None, ()))
        have = _addresses(world.host, "up0")
        assert "203.0.113.9/32" in have
        assert f"{FIP}/32" not in have
    finally:
        sh(world.host, "ip addr del 203.0.113.9/32 dev up0")
        run_in(world.host, _apply, world.state, _plan("g1"))


def test_teardown_leaves_nothing() -> None:
    with (
        namespace("t") as host,
        tempfile.TemporaryDirectory(prefix="crf-", dir="/tmp") as tmp,
    ):
        state = Path(tmp)
        sh(host, "ip link add up0 type veth peer name up1 && ip link set up0 up")
        before = (_addresses(host, "up0"), sh(host, "nft list ruleset").stdout)
        run_in(host, _apply, state, _plan(None))
        assert f"{FIP}/32" in _addresses(host, "up0")
        run_in(host, _teardown, state)
        assert (_addresses(host, "up0"), sh(host, "nft list ruleset").stdout) == before
        assert not any(state.rglob("*"))


def test_the_old_mapping_s_connections_are_forgotten(world: World) -> None:
    run_in(world.host, _apply, world.state, _plan("g1"))
    assert _connect(world.client, FIP) == f"g1 {CLIENT}"
    assert run_in(world.host, links.forget_connections, FIP) >= 1
    assert run_in(world.host, links.forget_connections, FIP) == 0
