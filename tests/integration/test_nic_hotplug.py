"""A NIC on a nat network hot-plugged into the running reference guest, its link taken down
and up, and unplugged (a guest that does not answer the request keeps the card), with the real
``corral`` command run inside a network namespace the test makes (``ip netns exec``):
corrald, the network's bridge, the NIC's tap and the guest's QEMU all live there.

The guest is asked through its serial console: which interface has the NIC's MAC
(``/sys/class/net/*/address``), and its carrier (``/sys/class/net/<if>/carrier``). The nat
network's uplink is a veth into a second namespace; no traffic leaves the two namespaces,
and dnsmasq has no upstream servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.compute.context import Corral
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests import daemons
from tests.integration.conftest import CORRAL, GuestShell
from tests.netns import namespace, sh

pytestmark = [
    pytest.mark.tcg,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="virtual networks need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
]

#: How long the guest has to see a card arrive or leave.
GUEST_DEADLINE = 60.0


@dataclass
class Host:
    """A namespace standing in for the host, with corral's state directory."""

    ns: str
    state: Path
    home: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CORRAL_HOME=str(self.state), HOME=str(self.home), COLUMNS="200")
        for name in ("CORRAL_URL", "CORRAL_TOKEN", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
            env.pop(name, None)
        try:
            return subprocess.run(
                ["ip", "netns", "exec", self.ns, CORRAL, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            daemons.note(self.state)

    def ok(self, *args: str, timeout: float = 300) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"corral {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def has_link(self, name: str) -> bool:
        return sh(self.ns, f"ip link show {name}", check=False).returncode == 0


@pytest.fixture
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="cnic-", dir="/tmp"))
    with namespace("h") as ns, namespace("o") as outside:
        sh(ns, f"ip link add up0 type veth peer name down0 && ip link set down0 netns {outside}")
        sh(ns, "ip addr add 10.201.0.1/24 dev up0 && ip link set up0 up")
        sh(ns, "ip route add default via 10.201.0.2")
        sh(outside, "ip addr add 10.201.0.2/24 dev down0 && ip link set down0 up")
        (root / "home").mkdir()
        h = Host(ns, root / "state", root / "home")
        ctx = Corral(Home(h.state))
        ensure_reference(ctx)
        ctx.close()
        try:
            yield h
        finally:
            try:
                h.run("destroy", "g")
                h.run("delete", "g")
                h.run("net", "delete", "lan")
            finally:
                daemons.stop(h.state)
                shutil.rmtree(root, ignore_errors=True)


def _interface_with(shell: GuestShell, mac: str, present: bool) -> str | None:
    """The guest's interface with MAC ``mac``, once it is there (``present``) or gone
    (``None``); asked again until then, within :data:`GUEST_DEADLINE`."""
    deadline = time.monotonic() + GUEST_DEADLINE
    while True:
        listing = shell.run(
            "for i in /sys/class/net/*; do echo IF ${i##*/} $(cat $i/address); done"
        )
        found = [
            line.split()[1]
            for line in listing.splitlines()
            if line.startswith("IF ") and line.split()[-1] == mac
        ]
        if bool(found) == present:
            return found[0] if found else None
        assert time.monotonic() < deadline, f"MAC {mac} {'never came' if present else 'stayed'}"


def _carrier(shell: GuestShell, interface: str, expected: str) -> None:
    """Wait for the guest's ``interface`` to read ``expected`` as its carrier."""
    deadline = time.monotonic() + GUEST_DEADLINE
    while (read := shell.run(f"cat /sys/class/net/{interface}/carrier").strip()) != expected:
        assert time.monotonic() < deadline, f"carrier of {interface} reads {read!r}"


def test_hotplug_link_and_unplug_a_nic_on_a_nat_network(host: Host) -> None:
    host.ok("net", "create", "lan", "--type", "nat", "--subnet", "10.77.0.0/24")
    host.ok("create", "g", "--image", "reference", "--memory", "256M")
    host.ok("start", "g", "--wait")
    ctx = Corral(Home(host.state))
    shell = GuestShell(ctx, "g")
    try:
        added = host.ok("nic", "add", "g", "--net", "lan")
        nic = next(n for n in json.loads(host.ok("nic", "list", "g", "--json")) if n["network"])
        assert f"{nic['name']} added on lan" in added
        assert nic["address"] == "10.77.0.2" and nic["link"] is True
        assert host.has_link(nic["tap"]), "the NIC's tap is not on the host"
        bridge = sh(host.ns, f"ip -o link show {nic['tap']}").stdout
        assert "master crb-lan" in bridge

        interface = _interface_with(shell, nic["mac"], present=True)
        assert interface is not None and interface.startswith("eth")
        shell.run(f"ip link set {interface} up")
        _carrier(shell, interface, "1")

        host.ok("nic", "link", "g", nic["name"], "down")
        _carrier(shell, interface, "0")
        listed = json.loads(host.ok("nic", "list", "g", "--json"))
        assert [n["link"] for n in listed if n["name"] == nic["name"]] == [False]
        host.ok("nic", "link", "g", nic["name"], "up")
        _carrier(shell, interface, "1")

        # A guest that does not release the card (its vCPUs stopped) keeps it, recorded and
        # working; the refusal says so.
        host.ok("pause", "g")
        ignored = host.run("nic", "remove", "g", nic["name"], "--timeout", "1")
        assert ignored.returncode != 0
        assert "release of network card" in ignored.stderr, ignored.stderr
        listed = json.loads(host.ok("nic", "list", "g", "--json"))
        assert nic["name"] in [n["name"] for n in listed]
        assert host.has_link(nic["tap"])
        info = json.loads(host.ok("net", "info", "lan", "--json"))
        assert [p["address"] for p in info["ports"]] == ["10.77.0.2"]
        # The request stays with the guest: once it runs, the next removal completes
        # whether it released the card meanwhile or not.
        host.ok("resume", "g")

        removed = host.ok("nic", "remove", "g", nic["name"])
        assert f"{nic['name']} removed" in removed
        assert _interface_with(shell, nic["mac"], present=False) is None
        assert not host.has_link(nic["tap"]), "the NIC's tap is still on the host"
        info = json.loads(host.ok("net", "info", "lan", "--json"))
        assert info["ports"] == [] and info["used"] == 0
        assert [n["name"] for n in json.loads(host.ok("nic", "list", "g", "--json"))] == ["net0"]

        # The address is free again: the next NIC on the network gets it.
        again = json.loads(host.ok("nic", "list", "g", "--json"))
        assert all(n["network"] is None for n in again)
        host.ok("nic", "add", "g", "--net", "lan")
        info = json.loads(host.ok("net", "info", "lan", "--json"))
        assert [p["address"] for p in info["ports"]] == ["10.77.0.2"]
    finally:
        ctx.close()
