"""Make the host match a :class:`~corral.net.plan.HostPlan`: bridges and taps (netlink),
corral's nftables table, IP forwarding, one dnsmasq per managed network.

:func:`apply` is idempotent: a host that already matches the plan is left as it is (no link
is set, no dnsmasq is signalled or restarted, the nft table is loaded anew with the same
rules). It is also the supervision of the dnsmasq processes: corrald calls it periodically,
and a dnsmasq that died is started again.

An apply runs in two phases. The first makes or updates everything the plan has (after
checking the host: a foreign interface with a corral bridge's name, or a missing bridge of a
``bridged`` network, stops it before any change); the second removes what the plan no longer
has. What a failure leaves:

* the nft table is replaced in one transaction: the old table or the new one, never half;
* a failure in the first phase removes the bridges and taps this call created and stops the
  dnsmasq processes it started; then, when the caller passes the plan that was in force
  before (``previous``), that plan is applied again, which also restores what the failed
  call changed in place (addresses, carriers, dnsmasq files, the nft table). Without
  ``previous``, changes made in place stay;
* a failure in the second phase leaves the plan applied and some stale objects of corral's,
  which the next apply removes.

Every operation acts on the network namespace of the calling thread; files go under
``<state_dir>/net/<network>/``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.errors import HostError
from corral.net import dnsmasq, links, nft
from corral.net.floating import stale_addresses
from corral.net.links import default_uplink, forget_connections, host_interfaces, host_subnets
from corral.net.plan import (
    DnsmasqFiles,
    HostPlan,
    check_host,
    dhcp_hosts,
    dns_hosts,
    dnsmasq_conf,
    remove_ruleset,
    ruleset,
    stale_links,
)
from corral.spec.net import NetworkSpec

__all__ = [
    "apply",
    "default_uplink",
    "dnsmasq_files",
    "forget_connections",
    "host_interfaces",
    "host_subnets",
    "teardown",
]

_log = logging.getLogger(__name__)

#: The switch of IPv4 forwarding, per network namespace.
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
#: The switch that has bridged IPv4 frames pass the IP hooks, per network namespace (the
#: file appears once the namespace has a bridge).
BRIDGE_NF_CALL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def net_dir(state_dir: Path) -> Path:
    """The directory that holds one directory per managed network."""
    return state_dir / "net"


def dnsmasq_files(state_dir: Path, network: str) -> DnsmasqFiles:
    """Where managed network ``network``'s dnsmasq keeps its files."""
    return DnsmasqFiles(str(net_dir(state_dir) / network))


class _Undo:
    """What the first phase created, undone in reverse order on failure."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, step: Callable[[], None]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        for what, step in reversed(self.steps):
            try:
                step()
            except Exception:  # each step is tried; the original failure is what is raised
                _log.exception("undoing %s failed", what)


def enable_forwarding() -> None:
    """Turn on IPv4 forwarding, which a ``nat`` network's routing needs.

    It is never turned off again: other software of the host may rely on it.
    """
    if IP_FORWARD.read_text().strip() != "1":
        IP_FORWARD.write_text("1\n")


def enable_bridge_filtering() -> None:
    """Have bridged IPv4 frames pass the IP hooks, which security groups need (see
    :mod:`corral.net.security`): every bridged IPv4 frame of the namespace then meets the
    ``inet`` and ``ip`` tables, corral's and any other firewall's there.

    It is never turned off again: other software of the host may rely on it.

    :raise HostError: the kernel has no bridge netfilter.
    """
    if not BRIDGE_NF_CALL.exists():
        raise HostError(f"{BRIDGE_NF_CALL} is missing: security groups need br_netfilter")
    if BRIDGE_NF_CALL.read_text().strip() != "1":
        BRIDGE_NF_CALL.write_text("1\n")


def _ensure_links(ipr: Any, plan: HostPlan, undo: _Undo) -> None:
    # What is about to be created is registered first: a step that fails after making the
    # interface still has it removed.
    host = links.links(ipr)
    for spec in plan.managed:
        if spec.bridge_ifname not in host:
            undo.add(f"bridge {spec.bridge_ifname}", _deleter(spec.bridge_ifname))
        links.ensure_bridge(ipr, spec, host)
    host = links.links(ipr)
    for port in plan.ports:
        spec = plan.network(port.network)
        if port.tap not in host:
            undo.add(f"tap {port.tap}", _deleter(port.tap))
        links.ensure_tap(ipr, port, host[spec.bridge_ifname], spec.vlan, host)


def _deleter(name: str) -> Callable[[], None]:
    def delete() -> None:
        with links.netlink() as ipr:
            links.delete(ipr, name)

    return delete


def _ensure_dnsmasq(plan: HostPlan, spec: NetworkSpec, state_dir: Path, undo: _Undo) -> None:
    files = dnsmasq_files(state_dir, spec.name)
    Path(files.root).mkdir(parents=True, exist_ok=True)
    leases = plan.leases.get(spec.name, ())
    conf_changed = dnsmasq.write_atomic(Path(files.conf), dnsmasq_conf(spec, files))
    hosts_changed = dnsmasq.write_atomic(Path(files.dhcp_hosts), dhcp_hosts(leases))
    hosts_changed |= dnsmasq.write_atomic(Path(files.dns_hosts), dns_hosts(spec, leases))
    daemon = dnsmasq.running(files)
    if daemon is not None and conf_changed:
        dnsmasq.stop(files)
        daemon = None
    if daemon is None:
        dnsmasq.start(files)
        undo.add(f"dnsmasq of {spec.name}", lambda: dnsmasq.stop(files))
    elif hosts_changed:
        dnsmasq.reload(daemon)


def floating_record(state_dir: Path) -> Path:
    """Where corral notes the floating addresses it added to the host, as ``[interface,
    address]`` pairs: only those are ever removed again."""
    return net_dir(state_dir) / "floating-addresses.json"


def _floating_added(state_dir: Path) -> set[tuple[str, str]]:
    path = floating_record(state_dir)
    if not path.exists():
        return set()
    return {(str(name), str(address)) for name, address in json.loads(path.read_text())}


def _note_floating(state_dir: Path, added: set[tuple[str, str]]) -> None:
    path = floating_record(state_dir)
    if not added:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    dnsmasq.write_atomic(path, json.dumps(sorted(added)) + "\n")


def _wanted_floating(plan: HostPlan) -> set[tuple[str, str]]:
    name = plan.floating_interface
    return set() if name is None else {(name, str(a)) for a in plan.floating_addresses}


def _ensure_floating(ipr: Any, plan: HostPlan, state_dir: Path, undo: _Undo) -> None:
    """Add the plan's floating addresses (``/32``) to the floating interface, noting each
    before it is added so that a later apply or the undo removes it."""
    if plan.floating_interface is None or not plan.floating_addresses:
        return
    name = plan.floating_interface
    have = {i.ip for i in links.host_addresses(ipr, name) if i.network.prefixlen == 32}
    added = _floating_added(state_dir)
    for address in plan.floating_addresses:
        if address in have:
            continue
        added.add((name, str(address)))
        _note_floating(state_dir, added)
        undo.add(f"floating address {address}", _address_remover(name, address))
        links.add_host_address(ipr, name, address)


def _address_remover(name: str, address: ipaddress.IPv4Address) -> Callable[[], None]:
    def remove() -> None:
        with links.netlink() as ipr:
            links.del_host_address(ipr, name, address)

    return remove


def _remove_stale_floating(plan: HostPlan, state_dir: Path) -> None:
    added = _floating_added(state_dir)
    wanted = _wanted_floating(plan)
    for name, address in stale_addresses(added, wanted):
        _address_remover(name, ipaddress.IPv4Address(address))()
        added.discard((name, address))
        _note_floating(state_dir, added)


def _remove_stale(plan: HostPlan, state_dir: Path) -> None:
    _remove_stale_floating(plan, state_dir)
    wanted = {spec.name for spec in plan.managed}
    root = net_dir(state_dir)
    if root.is_dir():
        for directory in sorted(root.iterdir()):
            if directory.is_dir() and directory.name not in wanted:
                dnsmasq.stop(DnsmasqFiles(str(directory)))
                shutil.rmtree(directory)
    with links.netlink() as ipr:
        host = links.links(ipr)
        aliases = {name: link.alias for name, link in host.items()}
        taps = {name for name, link in host.items() if links.is_corral_tap(link)}
        for name in stale_links(plan, aliases, taps):
            links.delete(ipr, name)


def apply(plan: HostPlan, state_dir: Path, previous: HostPlan | None = None) -> None:
    """Make the host match ``plan``; see the module's description for what a failure leaves.

    :param plan: what the host must have.
    :param state_dir: corral's state directory (dnsmasq files under ``net/``).
    :param previous: the plan in force before, re-applied if this one fails part-way.
    :raise Conflict: an interface named like one of the plan's bridges is not corral's, or a
        bridged network's bridge does not exist; nothing was changed.
    :raise ToolError: nft or dnsmasq failed.
    :raise HostError: a tool is missing, or the kernel lacks a feature the plan needs.
    """
    with links.netlink() as ipr:
        host = links.links(ipr)
        check_host(plan, {name: link.alias for name, link in host.items()})
        undo = _Undo()
        try:
            _ensure_links(ipr, plan, undo)
            _ensure_floating(ipr, plan, state_dir, undo)
            if any(spec.kind == "nat" for spec in plan.managed):
                enable_forwarding()
            if plan.security.active:
                enable_bridge_filtering()
            nft.ensure(ruleset(plan) if plan.managed else remove_ruleset(), _nft_record(state_dir))
            for spec in plan.managed:
                _ensure_dnsmasq(plan, spec, state_dir, undo)
        except BaseException:
            undo.run()
            if previous is not None:
                try:
                    apply(previous, state_dir)
                except Exception:
                    _log.exception("re-applying the previous network plan failed")
            raise
    _remove_stale(plan, state_dir)


def _nft_record(state_dir: Path) -> Path:
    """What corral loaded into nftables last, and what the kernel then held."""
    return net_dir(state_dir) / "nft-loaded.json"


def teardown(state_dir: Path) -> None:
    """Remove everything of corral's networks from the host: every dnsmasq and its files,
    the taps and bridges tagged corral's, the nft table. IP forwarding stays on."""
    _remove_stale(HostPlan(networks=()), state_dir)
    nft.load(remove_ruleset())
    _nft_record(state_dir).unlink(missing_ok=True)
    root = net_dir(state_dir)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
