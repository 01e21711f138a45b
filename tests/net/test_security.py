"""Security groups on real kernel networking, inside namespaces the tests make.

``host`` is where corral applies an ``isolated`` network ``lan``; ``a``, ``b`` and ``c`` stand
in for guests: namespaces plugged by a veth into the bridge, with the fixed addresses corral
would have leased them. Guest ``a`` is guarded by group ``web`` (tcp/22 from the ports of group
``bastion``), guest ``b`` by ``bastion`` (no rules: nothing in but answers), guest ``c`` by
nothing. Connections are the test process's own sockets, made inside the namespaces.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from corral.net import apply as net_apply
from corral.net.plan import HostPlan, ruleset
from corral.net.security import Guard, Rule, SecurityPlan
from corral.spec.net import NetworkSpec
from tests.netns import namespace, run_in, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LAN = NetworkSpec(name="lan", kind="isolated", subnet=ipaddress.IPv4Network("10.77.0.0/24"))
A, B, C = (ipaddress.IPv4Address(f"10.77.0.{n}") for n in (10, 11, 12))
MAC = {"a": "52:54:00:00:01:0a", "b": "52:54:00:00:01:0b", "c": "52:54:00:00:01:0c"}
SSH_FROM_BASTION = Rule("in", "tcp", 22, 22, group="bastion")
GUARDS = (Guard("ga", MAC["a"], A, ("web",)), Guard("gb", MAC["b"], B, ("bastion",)))
PLAN = HostPlan(
    networks=(LAN,),
    security=SecurityPlan(groups={"web": (SSH_FROM_BASTION,), "bastion": ()}, guards=GUARDS),
)
#: How long a connection that is dropped is waited for.
DROPPED = 1.5
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class World:
    host: str
    a: str
    b: str
    c: str
    state: Path


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def socket_in(ns: str) -> socket.socket:
    """A TCP socket of namespace ``ns`` (made there by this thread, which then returns)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _apply(state: Path, plan: HostPlan) -> None:
    net_apply.apply(plan, state)


def _teardown(state: Path) -> None:
    net_apply.teardown(state)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with (
        namespace("h") as host,
        namespace("a") as a,
        namespace("b") as b,
        namespace("c") as c,
        tempfile.TemporaryDirectory(prefix="crs-", dir="/tmp") as tmp,
    ):
        state = Path(tmp)
        for tag, ns, address in (("a", a, A), ("b", b, B), ("c", c, C)):
            sh(host, f"ip link add g{tag} type veth peer name eth0 netns {ns}")
            sh(ns, f"ip link set eth0 address {MAC[tag]} && ip link set eth0 up")
            sh(ns, f"ip addr add {address}/24 dev eth0")
        run_in(host, _apply, state, PLAN)
        try:
            sh(host, "for p in ga gb gc; do ip link set $p master crb-lan up; done")
            yield World(host, a, b, c, state)
        finally:
            run_in(host, _teardown, state)


@pytest.fixture
def server(world: World) -> Iterator[socket.socket]:
    """A listening socket on guest a's port 22."""
    sock = socket_in(world.a)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 22))
    sock.listen(8)
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def connects(ns: str, address: ipaddress.IPv4Address, port: int = 22) -> bool:
    """Whether a TCP connection from namespace ``ns`` is answered within :data:`DROPPED`."""
    sock = socket_in(ns)
    sock.settimeout(DROPPED)
    try:
        sock.connect((str(address), port))
    except (TimeoutError, ConnectionRefusedError, OSError):
        return False
    finally:
        sock.close()
    return True


def pings(ns: str, address: ipaddress.IPv4Address, source: str = "") -> bool:
    option = f"-I {source} " if source else ""
    return sh(ns, f"busybox ping -c1 -W1 {option}{address}", check=False).returncode == 0


def test_the_ruleset_is_loaded_and_the_bridge_filtered(world: World) -> None:
    table = sh(world.host, "nft list table inet corral").stdout
    assert "set sg_web" in table and "set sg_bastion" in table
    assert "10.77.0.11" in sh(world.host, "nft list set inet corral sg_bastion").stdout
    assert 'iifname "ga"' in sh(world.host, "nft list table bridge corral").stdout
    nf = sh(world.host, "cat /proc/sys/net/bridge/bridge-nf-call-iptables").stdout
    assert nf.strip() == "1"


def test_ssh_from_the_bastion_only(world: World, server: socket.socket) -> None:
    assert connects(world.b, A)
    conn, peer = server.accept()
    conn.close()
    assert peer[0] == str(B)
    assert not connects(world.c, A)


def test_ping_from_c_is_blocked_and_a_goes_out(world: World) -> None:
    assert pings(world.c, B) is False  # b's group has no rules
    assert not pings(world.c, A)
    assert pings(world.a, C)  # outbound, and its answers come back


def test_a_guest_cannot_take_another_address(world: World) -> None:
    assert pings(world.b, C)
    sh(world.b, "ip addr add 10.77.0.99/24 dev eth0")
    try:
        assert not pings(world.b, C, source="10.77.0.99")
    finally:
        sh(world.b, "ip addr del 10.77.0.99/24 dev eth0")


def test_a_live_rule_change_keeps_open_connections(world: World, server: socket.socket) -> None:
    client = socket_in(world.b)
    client.settimeout(5)
    client.connect((str(A), 22))
    conn, _ = server.accept()
    try:
        from_c = Rule("in", "tcp", 22, 22, cidr=ipaddress.IPv4Network(f"{C}/32"))
        changed = replace(
            PLAN, security=replace(PLAN.security, groups={"web": (from_c,), "bastion": ()})
        )
        run_in(world.host, _apply, world.state, changed)
        assert "10.77.0.12" in sh(world.host, "nft list chain inet corral ingress_web").stdout
        client.sendall(b"still here\n")
        assert conn.recv(64) == b"still here\n"
        conn.sendall(b"and back\n")
        assert client.recv(64) == b"and back\n"
        assert not connects(world.b, A)
        assert connects(world.c, A)
        server.accept()[0].close()
    finally:
        client.close()
        conn.close()
        run_in(world.host, _apply, world.state, PLAN)


def test_an_out_rule_limits_what_leaves(world: World) -> None:
    ping_c = Rule("out", "icmp", cidr=ipaddress.IPv4Network(f"{C}/32"))
    guards = (replace(GUARDS[0], groups=("web", "egress")), GUARDS[1])
    groups = {"web": (SSH_FROM_BASTION,), "bastion": (), "egress": (ping_c,)}
    listener = socket_in(world.c)
    listener.bind(("0.0.0.0", 8080))
    listener.listen(4)
    run_in(world.host, _apply, world.state, replace(PLAN, security=SecurityPlan(groups, guards)))
    try:
        assert pings(world.a, C)
        assert not connects(world.a, C, 8080)
        assert connects(world.b, C, 8080)  # b's groups have no out rules
    finally:
        listener.close()
        run_in(world.host, _apply, world.state, PLAN)


def test_detaching_restores_access(world: World, server: socket.socket) -> None:
    assert not pings(world.c, A)
    run_in(world.host, _apply, world.state, replace(PLAN, security=SecurityPlan()))
    try:
        assert pings(world.c, A)
        assert connects(world.c, A)
        server.accept()[0].close()
        assert "sg_" not in sh(world.host, "nft list ruleset").stdout
        assert "table bridge corral" not in sh(world.host, "nft list ruleset").stdout
    finally:
        run_in(world.host, _apply, world.state, PLAN)


def test_teardown_leaves_nothing() -> None:
    with (
        namespace("h") as host,
        tempfile.TemporaryDirectory(prefix="crs-", dir="/tmp") as tmp,
    ):
        before = sh(host, "nft list ruleset").stdout
        run_in(host, _apply, Path(tmp), PLAN)
        assert "table bridge corral" in sh(host, "nft list ruleset").stdout
        run_in(host, _teardown, Path(tmp))
        assert sh(host, "nft list ruleset").stdout == before
        assert "crb-lan" not in sh(host, "ip -o link").stdout


def test_a_thousand_rules_check_in_nft() -> None:
    rules = tuple(Rule("in", "tcp", 1000 + n, 1000 + n, cidr=None) for n in range(1000))
    guards = tuple(
        Guard(f"crt-{n:011x}", f"52:54:00:00:02:{n:02x}", A + n, ("many",)) for n in range(20)
    )
    plan = replace(PLAN, security=SecurityPlan({"many": rules}, guards))
    with namespace("k") as ns:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"],
            input=ruleset(plan),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
