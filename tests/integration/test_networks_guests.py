"""Reference guests on virtual networks, end to end, with the real ``corral`` command run
inside a network namespace the test makes (``ip netns exec``): the on-demand corrald, its
bridges, taps, nftables table, dnsmasq processes and the guests' QEMU all live there.

The nat network's uplink is a veth into a second namespace (``outside``, the default route
of the first); no traffic leaves the two namespaces, and dnsmasq has no upstream servers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.compute.context import Corral
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests import daemons
from tests.integration.conftest import CORRAL
from tests.netns import namespace, sh

pytestmark = [
    pytest.mark.tcg,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="virtual networks need root"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed"),
]

#: The outside namespace's address: what masquerading reaches.
OUTSIDE = "10.200.0.2"
UPLINK = "10.200.0.1"


@dataclass
class World:
    """A host namespace with corral's state directory, and the namespace its uplink leads to."""

    ns: str
    outside: str
    root: Path
    state: Path = field(init=False)
    home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.home = self.root / "home"
        self.home.mkdir()

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CORRAL_HOME=str(self.state), HOME=str(self.home), COLUMNS="200")
        for name in ("CORRAL_URL", "CORRAL_TOKEN", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
            env.pop(name, None)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, CORRAL, *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self.argv(*args),
                env=self.env(),
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

    def ssh(self, vm: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("ssh", vm, "--", command, timeout=timeout)

    def host_state(self) -> tuple[list[str], str, list[int]]:
        """What must be as it was after everything is deleted: the namespace's interfaces,
        its nftables ruleset, and the dnsmasq processes of this state directory."""
        links = sorted(
            line.split(":")[1].strip().split("@")[0]
            for line in sh(self.ns, "ip -o link").stdout.splitlines()
        )
        ruleset = sh(self.ns, "nft list ruleset").stdout
        return links, ruleset, dnsmasq_pids(self.state)

    def vms(self) -> list[str]:
        return sorted(v["name"] for v in json.loads(self.ok("list", "--all", "--json")))

    def cleanup(self) -> None:
        for name in self.vms():
            self.run("destroy", name)
            self.run("delete", name)
        for network in json.loads(self.ok("net", "list", "--json")):
            self.run("net", "delete", network["name"])


def dnsmasq_pids(state: Path) -> list[int]:
    """The dnsmasq processes whose command line names ``state``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and cmdline[0].endswith(b"dnsmasq")
            and str(state).encode() in b" ".join(cmdline)
        ):
            pids.append(int(proc.name))
    return sorted(pids)


@pytest.fixture
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="cn-", dir="/tmp"))
    with namespace("h") as ns, namespace("o") as outside:
        sh(ns, f"ip link add up0 type veth peer name down0 && ip link set down0 netns {outside}")
        sh(ns, f"ip addr add {UPLINK}/24 dev up0 && ip link set up0 up")
        sh(ns, f"ip route add default via {OUTSIDE}")
        sh(outside, f"ip addr add {OUTSIDE}/24 dev down0 && ip link set down0 up")
        w = World(ns, outside, root)
        ctx = Corral(Home(w.state))
        ensure_reference(ctx)
        ctx.close()
        try:
            yield w
        finally:
            try:
                w.cleanup()
            finally:
                daemons.stop(w.state)
                shutil.rmtree(root, ignore_errors=True)


def _launch(w: World, name: str, network: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        w.argv(
            "launch",
            name,
            "--image",
            "reference",
            "--type",
            "t1.micro",
            "--key",
            "k1",
            "--net",
            network,
        ),
        env=w.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _addresses(w: World, network: str) -> dict[str, str]:
    info = json.loads(w.ok("net", "info", network, "--json"))
    return {p["vm"]: p["address"] for p in info["ports"]}


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
    launches = {
        name: _launch(w, name, net) for name, net in (("a", "lan"), ("b", "lan"), ("c", "iso"))
    }
    for name, proc in launches.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"launch {name}:\n{out}"

    # DHCP gave each guest the address corral assigned it.
    lan = _addresses(w, "lan")
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
    info = _addresses(w, "lan")
    assert info == {"d": "10.77.0.50"}
    w.ok("clone", "d", "e")
    cloned = _addresses(w, "lan")
    assert cloned["d"] == "10.77.0.50"
    assert re.match(r"10\.77\.0\.\d+$", cloned["e"]) and cloned["e"] != "10.77.0.50"
    w.ok("delete", "e")
    assert _addresses(w, "lan") == {"d": "10.77.0.50"}
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
