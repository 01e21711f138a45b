"""Reference guests on virtual networks, end to end, with the real ``corral`` command run
inside a network namespace the test makes (``ip netns exec``): the on-demand corrald, its
bridges, taps, nftables table, dnsmasq processes and the guests' QEMU all live there.

The nat network's uplink is a veth into a second namespace (``outside``, the default route
of the first); no traffic leaves the two namespaces, and dnsmasq has no upstream servers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import daemons
from tests.integration.netharness import (
    OUTSIDE,
    World,
    addresses,
    dnsmasq_pids,
    launch_all,
    make_world,
)
from tests.netns import sh

pytestmark = [
    pytest.mark.tcg,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="virtual networks need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
]


@pytest.fixture
def world() -> Iterator[World]:
    with make_world() as w:
        yield w


class Replies:
    """Counts the replies of a long-running ``ping`` read from its output."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.count = 0
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "bytes from" in line:
                with self.changed:
                    self.count += 1
                    self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: self.count >= count, timeout)
        assert ok, f"{self.count} ping replies, not {count}, within {timeout} s"


def test_guests_on_nat_and_isolated_networks(world: World) -> None:
    w = world
    before = w.host_state()
    w.ok("key", "create", "k1")
    w.ok("net", "create", "lan", "--type", "nat", "--subnet", "10.77.0.0/24")
    w.ok("net", "create", "iso", "--type", "isolated", "--subnet", "10.78.0.0/24")
    launch_all(w, {"a": "lan", "b": "lan", "c": "iso"})

    # DHCP gave each guest the address corral assigned it.
    lan = addresses(w, "lan")
    assert sorted(lan) == ["a", "b"]
    for name, address in lan.items():
        shown = w.ssh(name, "ip -4 addr show eth0")
        assert shown.returncode == 0, shown.stderr
        assert f"inet {address}/24" in shown.stdout

    # Names resolve through the network's dnsmasq.
    pinged = w.ssh("a", "ping -c1 -W 5 b.lan")
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    assert lan["b"] in pinged.stdout

    # The nat network reaches the outside namespace (masqueraded); the isolated one cannot.
    out = w.ssh("a", f"ping -c1 -W 5 {OUTSIDE}")
    assert out.returncode == 0, out.stdout + out.stderr
    # DHCP offers no route out of it; one through its bridge's address leads nowhere either.
    routed = "route add default gw 10.78.0.1 2>/dev/null; ping -c1 -W 2 " + OUTSIDE
    iso = w.ssh("c", routed)
    assert iso.returncode != 0
    assert "100% packet loss" in iso.stdout, iso.stdout + iso.stderr

    # A ping from a to b keeps flowing while corrald restarts.
    pinger = subprocess.Popen(
        w.argv("ssh", "a", "--", f"ping -i 0.2 {lan['b']}"),
        env=w.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        replies = Replies(pinger)
        replies.wait_for(5, 60)
        daemons.stop(w.state)
        assert not (w.state / "corrald.pid").exists() or not _daemon_alive(w.state)
        counted = replies.count
        w.ok("list")  # starts corrald again, which makes the host match the database
        replies.wait_for(counted + 15, 60)
        assert dnsmasq_pids(w.state), "dnsmasq is not running after corrald's restart"
    finally:
        pinger.kill()
        pinger.wait()
    again = w.ssh("a", "ping -c1 -W 5 b.lan")
    assert again.returncode == 0, again.stdout + again.stderr

    # Deleting everything leaves the namespace as it was.
    for name in ("a", "b", "c"):
        w.ok("destroy", name)
        w.ok("delete", name)
    w.ok("net", "delete", "lan")
    w.ok("net", "delete", "iso")
    assert w.host_state() == before


def _daemon_alive(state: Path) -> bool:
    try:
        pid = int((state / "corrald.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def test_create_start_ssh_and_clone_on_a_network(world: World) -> None:
    """``corral create --net`` with a fixed address, start, SSH to that address; a clone gets
    a port of its own; a network of no project of the caller's, or none, answers 404."""
    w = world
    w.ok("key", "create", "k1")
    w.ok("net", "create", "lan", "--type", "nat", "--subnet", "10.77.0.0/24")
    refused = w.run("create", "x", "--image", "reference", "--net", "nosuch")
    assert refused.returncode != 0
    assert "network 'nosuch' not found" in refused.stderr
    assert "x" not in w.vms()
    w.ok("create", "d", "--image", "reference", "--memory", "256M", "--net", "lan:10.77.0.50")
    info = addresses(w, "lan")
    assert info == {"d": "10.77.0.50"}
    w.ok("clone", "d", "e")
    cloned = addresses(w, "lan")
    assert cloned["d"] == "10.77.0.50"
    assert re.match(r"10\.77\.0\.\d+$", cloned["e"]) and cloned["e"] != "10.77.0.50"
    w.ok("delete", "e")
    assert addresses(w, "lan") == {"d": "10.77.0.50"}
    w.ok("start", "d", "--wait")
    # Without a key in the seed, SSH is not possible: the guest answers ping on its address.
    reached = sh(w.ns, "busybox ping -c 1 -w 60 10.77.0.50", check=False)
    assert reached.returncode == 0, reached.stdout
    taps = [line for line in sh(w.ns, "ip -o link").stdout.splitlines() if "crt-" in line]
    assert len(taps) == 1
    w.ok("destroy", "d")
    w.ok("delete", "d")
    w.ok("net", "delete", "lan")
    assert not [line for line in sh(w.ns, "ip -o link").stdout.splitlines() if "crt-" in line]
