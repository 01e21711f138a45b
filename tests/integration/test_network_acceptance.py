"""Issue 6's acceptance, and security groups and floating IPs checked with real connections
between reference guests, with the real ``corral`` command run inside a network namespace
the test makes (see :mod:`tests.integration.netharness`).

A connection to a guest's port 22 is told to have reached dropbear by its banner
(``SSH-2.0``); guests are told apart by a busybox ``nc`` server on port 8080 that answers
with the guest's name. The "client" of floating IPs is the uplink's outside namespace, which
routes the floating pool through the host namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.integration.netharness import (
    POOL,
    World,
    addresses,
    launch_all,
    make_world,
    until,
)
from tests.netns import sh

pytestmark = [
    pytest.mark.tcg,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="virtual networks need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
]

#: The lan network's gateway: the host's own address there, where ``corral ssh`` comes from.
GATEWAY = "10.77.0.1"
#: The port of each guest's name server.
NAME_PORT = 8080


@pytest.fixture
def world() -> Iterator[World]:
    with make_world(floating=True) as w:
        yield w


def test_acceptance_sequence(world: World) -> None:
    """The sequence of the issue's acceptance, each command succeeding; deleting it all
    leaves the namespace's links, nftables ruleset, dnsmasq processes and uplink addresses
    as they were."""
    w = world
    before = w.host_state()
    uplink_before = w.uplink_addresses()
    w.ok("key", "create", "k1")

    w.ok("net", "create", "lan", "--type", "nat", "--subnet", "10.77.0.0/24")
    w.ok("launch", "a", "--image", "reference", "--type", "t1.micro", "--key", "k1", "--net", "lan")
    w.ok("launch", "b", "--image", "reference", "--type", "t1.micro", "--key", "k1", "--net", "lan")
    lan = addresses(w, "lan")
    pinged = w.ssh("a", "ping -c1 b.lan")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    assert f"bytes from {lan['b']}" in pinged.stdout

    created = w.ok("sg", "create", "web", "--allow", "tcp/80", "--allow", "tcp/22")
    assert "security group web created in project default with 2 rules" in created
    attached = w.ok("sg", "attach", "web", "a")
    assert "security group web attached" in attached

    address = w.ok("fip", "allocate").strip()
    assert ipaddress.IPv4Address(address) in POOL
    associated = w.ok("fip", "associate", address, "a")
    assert f"floating ip {address} -> vm a net0 ({lan['a']})" in associated
    assert f"{address}/32" in w.uplink_addresses()

    w.ok("delete", "a", "b")
    w.ok("net", "delete", "lan")
    # The address stays the project's (and on the uplink) until it is released.
    assert f"{address}/32" in w.uplink_addresses()
    w.ok("fip", "release", address)
    w.ok("sg", "delete", "web")

    assert w.host_state() == before
    assert w.uplink_addresses() == uplink_before


def _banner(w: World, vm: str, address: str) -> str:
    """The first line ``vm`` reads from ``address``:22 (dropbear's banner, or nothing)."""
    return w.ssh(vm, f"nc -w 3 {address} 22 </dev/null | head -n1").stdout


def _from_outside(w: World, address: str, port: int) -> str:
    """The first line the outside namespace reads from ``address``:``port`` (or nothing)."""
    line = f"busybox nc -w 3 {address} {port} </dev/null | head -n1"
    return sh(w.outside, line, check=False).stdout


def _serve_name(w: World, vm: str) -> None:
    """Start in ``vm`` a server on :data:`NAME_PORT` answering every connection with its
    name; return once the guest itself reaches it."""
    started = w.ssh(vm, f"setsid nc -ll -p {NAME_PORT} -e echo {vm} </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0, started.stdout + started.stderr
    until(lambda: w.ssh(vm, f"nc -w 3 127.0.0.1 {NAME_PORT} </dev/null").stdout, vm)


def test_security_groups_and_floating_ips_with_guests(world: World) -> None:
    """A group letting in tcp/22 only from another group's NICs (and corral's own SSH from
    the host) guards a: b reaches a's SSH server, c and the outside (through a floating IP)
    do not, c's ping does not reach a while a's reaches c; detaching restores it all. The
    floating IP then reaches a, and after moving, b, neither guest restarted."""
    w = world
    w.ok("key", "create", "k1")
    w.ok("net", "create", "lan", "--type", "nat", "--subnet", "10.77.0.0/24")
    launch_all(w, {"a": "lan", "b": "lan", "c": "lan"})
    lan = addresses(w, "lan")
    pids = w.pids()
    assert all(pids[name] for name in "abc"), pids
    for name in ("a", "b"):
        _serve_name(w, name)

    # Open before any group: c reaches a.
    assert "SSH-2.0" in until(lambda: _banner(w, "c", lan["a"]), "SSH-2.0")

    w.ok("sg", "create", "bastion", "--allow", "tcp/22")
    w.ok("sg", "attach", "bastion", "b")
    w.ok("sg", "create", "guard", "--allow", "tcp/22", "--from-group", "bastion")
    w.ok("sg", "rule", "add", "guard", "tcp/22", "--from", f"{GATEWAY}/32")
    w.ok("sg", "attach", "guard", "a")
    guard = json.loads(w.ok("sg", "info", "guard", "--json"))
    assert len(guard["rules"]) == 2 and guard["attached"]

    address = w.ok("fip", "allocate").strip()
    assert ipaddress.IPv4Address(address) in POOL
    w.ok("fip", "associate", address, "a")

    assert "SSH-2.0" in _banner(w, "b", lan["a"])
    assert "SSH-2.0" not in _banner(w, "c", lan["a"])
    assert "SSH-2.0" not in _from_outside(w, address, 22)
    assert _from_outside(w, address, NAME_PORT) == ""
    refused = w.ssh("c", f"ping -c1 -W 2 {lan['a']}")
    assert refused.returncode != 0 and "100% packet loss" in refused.stdout, refused.stdout
    outbound = w.ssh("a", f"ping -c1 -W 5 {lan['c']}")
    assert outbound.returncode == 0, outbound.stdout + outbound.stderr

    w.ok("sg", "detach", "guard", "a")
    w.ok("sg", "detach", "bastion", "b")
    assert "SSH-2.0" in _banner(w, "c", lan["a"])
    pinged = w.ssh("c", f"ping -c1 -W 5 {lan['a']}")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr

    # The floating IP reaches a from the outside; moved, it reaches b.
    assert "SSH-2.0" in until(lambda: _from_outside(w, address, 22), "SSH-2.0")
    assert until(lambda: _from_outside(w, address, NAME_PORT), "a").strip() == "a"
    w.ok("fip", "disassociate", address)
    assert _from_outside(w, address, NAME_PORT) == ""
    moved = w.ok("fip", "associate", address, "b")
    assert f"-> vm b net0 ({lan['b']})" in moved
    assert until(lambda: _from_outside(w, address, NAME_PORT), "b").strip() == "b"
    assert "SSH-2.0" in _from_outside(w, address, 22)
    assert w.pids() == pids
