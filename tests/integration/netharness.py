"""The world of the tests of reference guests on virtual networks: the real ``corral``
command run inside a network namespace the test makes (``ip netns exec``), where the
on-demand corrald, its bridges, taps, nftables tables, dnsmasq processes and the guests' QEMU
all live.

A nat network's uplink is a veth (``up0``) into a second namespace (``outside``, the default
route of the first), which also routes the floating pool (:data:`POOL`, when the world has
one) through the host namespace. No traffic leaves the two namespaces, and dnsmasq has no
upstream servers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from corral.compute.context import Corral
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests import daemons
from tests.integration.conftest import CORRAL
from tests.netns import namespace, sh

#: The outside namespace's address: what masquerading reaches.
OUTSIDE = "10.200.0.2"
#: The host namespace's address on its uplink ``up0``.
UPLINK = "10.200.0.1"
#: The floating pool of a world made with one; it lives on ``up0``.
POOL = ipaddress.IPv4Network("203.0.113.0/29")


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

    def uplink_addresses(self) -> list[str]:
        """The IPv4 addresses on the uplink ``up0`` (where floating addresses live)."""
        shown = sh(self.ns, "ip -4 -o addr show dev up0").stdout.split()
        return sorted(shown[i + 1] for i, word in enumerate(shown) if word == "inet")

    def vms(self) -> list[str]:
        return sorted(v["name"] for v in json.loads(self.ok("list", "--all", "--json")))

    def pids(self) -> dict[str, int | None]:
        """Each VM's QEMU process, by VM name."""
        return {v["name"]: v["pid"] for v in json.loads(self.ok("list", "--all", "--json"))}

    def cleanup(self) -> None:
        for name in self.vms():
            self.run("destroy", name)
            self.run("delete", name)
        for fip in json.loads(self.ok("fip", "list", "--json")):
            self.run("fip", "release", fip["address"])
        for group in json.loads(self.ok("sg", "list", "--json")):
            self.run("sg", "delete", group["name"])
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


@contextmanager
def make_world(floating: bool = False) -> Iterator[World]:
    """A :class:`World` with the reference image imported; with ``floating``, corral.toml
    gives it :data:`POOL` on ``up0`` and the outside namespace routes the pool to the host.
    Whatever the test left is deleted after it."""
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
        if floating:
            sh(outside, f"ip route add {POOL} via {UPLINK}")
            (w.state / "corral.toml").write_text(
                f'[network]\nfloating_pool = "{POOL}"\nfloating_interface = "up0"\n'
            )
        try:
            yield w
        finally:
            try:
                w.cleanup()
            finally:
                daemons.stop(w.state)
                shutil.rmtree(root, ignore_errors=True)


def launch(w: World, name: str, network: str) -> subprocess.Popen[str]:
    """``corral launch NAME`` of the reference image with key ``k1`` on ``network``, started."""
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


def launch_all(w: World, guests: dict[str, str]) -> None:
    """Launch the guests (name: network) side by side; each launch must succeed."""
    launches = {name: launch(w, name, net) for name, net in guests.items()}
    for name, proc in launches.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"launch {name}:\n{out}"


def addresses(w: World, network: str) -> dict[str, str]:
    """The addresses of the VMs' ports on ``network``, by VM name."""
    info = json.loads(w.ok("net", "info", network, "--json"))
    return {p["vm"]: p["address"] for p in info["ports"]}


def until(probe: Callable[[], str], wanted: str, timeout: float = 30) -> str:
    """Ask ``probe`` (itself bounded in time) again until its output holds ``wanted``, within
    ``timeout`` seconds; its last output."""
    deadline = time.monotonic() + timeout
    while wanted not in (seen := probe()):
        assert time.monotonic() < deadline, f"{wanted!r} not seen within {timeout} s: {seen!r}"
    return seen
