"""The host side of the virtual networks: the host planned from the database, and made so.

:func:`sync_host` reads the networks, ports, security groups and floating IPs as a session
sees them (its uncommitted change too), plans the host (:func:`host_plan`, pure) and has
:mod:`corral.net.apply` make it so. Changes of the records are serialised by
:func:`host_lock`; :func:`host_restored` brings the host back to the committed records when a
change fails after the host followed it. ``corral.toml``'s ``[network] host = false`` keeps
it all in the database.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.errors import CorralError, HostError
from corral.net.floating import FloatingMapping
from corral.net.plan import HostPlan, Lease, Port, nic_tap
from corral.spec.net import NetworkSpec
from corral.store.models import FloatingIpRow, NetworkRow, PortRow, VmRow


class HostNetworking(Protocol):
    """What :mod:`corral.net.apply` offers: making the host match a plan, and what it has."""

    def apply(self, plan: HostPlan, state_dir: Path) -> None: ...

    def default_uplink(self) -> str | None: ...

    def host_interfaces(self) -> set[str]: ...

    def host_subnets(self) -> Iterable[object]: ...

    def forget_connections(self, address: ipaddress.IPv4Address) -> int: ...


def network_of(row: NetworkRow) -> NetworkSpec:
    """The spec a network's row holds."""
    return NetworkSpec.model_validate(json.loads(row.spec))


@dataclass(frozen=True)
class PortFacts:
    """A port as the host plan needs it."""

    id: str
    network: str
    mac: str
    address: str | None
    vm: str
    #: The VM's UUID (its row's id) and the NIC's name: what the tap is named after.
    vm_uuid: str
    nic: str


def host_plan(
    networks: Sequence[NetworkSpec],
    ports: Sequence[PortFacts],
    default_uplink: str | None,
    floating: FloatingFacts | None = None,
) -> HostPlan:
    """What the host must have for ``networks`` and ``ports``: a tap per port (named after
    its VM's UUID and NIC, as QEMU's command line names it), a static lease per port on a
    managed network, and each ``nat`` network's uplink (its own, else ``default_uplink``;
    none: planned with no way out); and the floating IPs of ``floating``, on its interface
    (else ``default_uplink``)."""
    managed = {n.name for n in networks if n.managed}
    leases: dict[str, list[Lease]] = {name: [] for name in managed}
    for port in ports:
        if port.network in managed and port.address is not None:
            lease = Lease(port.mac, ipaddress.IPv4Address(port.address), port.vm)
            leases[port.network].append(lease)
    uplinks = {
        n.name: uplink
        for n in networks
        if n.kind == "nat" and (uplink := n.uplink or default_uplink) is not None
    }
    return HostPlan(
        networks=tuple(sorted(networks, key=lambda n: n.name)),
        ports=tuple(Port(nic_tap(UUID(p.vm_uuid), p.nic), p.network, p.mac) for p in ports),
        leases={name: tuple(found) for name, found in sorted(leases.items())},
        uplinks=uplinks,
        **_floating_plan(floating, ports, default_uplink),
    )


@dataclass(frozen=True)
class FloatingFacts:
    """The floating IPs as the host plan needs them."""

    #: Every allocated address.
    addresses: tuple[str, ...] = ()
    #: The associated ones: address and the id of its port.
    associated: tuple[tuple[str, str], ...] = ()
    #: ``[network] floating_interface``; ``None``: the default route's.
    interface: str | None = None


def _floating_plan(
    facts: FloatingFacts | None, ports: Sequence[PortFacts], default_uplink: str | None
) -> dict[str, Any]:
    if facts is None or not facts.addresses:
        return {}
    guests = {p.id: p.address for p in ports if p.address is not None}
    return {
        "floating": tuple(
            FloatingMapping(ipaddress.IPv4Address(a), ipaddress.IPv4Address(guests[port]))
            for a, port in facts.associated
            if port in guests
        ),
        "floating_addresses": tuple(ipaddress.IPv4Address(a) for a in sorted(facts.addresses)),
        "floating_interface": facts.interface or default_uplink,
    }


# -- the host ---------------------------------------------------------------------------------


def host_networking() -> HostNetworking:
    """:mod:`corral.net.apply`, imported when a host is changed or inspected.

    :raise HostError: this corral cannot change the host's networking.
    """
    try:
        return cast(HostNetworking, importlib.import_module("corral.net.apply"))
    except ImportError as exc:
        raise HostError(f"this corral cannot make virtual networks on the host: {exc}") from None


def host_enabled(ctx: Corral) -> bool:
    """Whether network changes reach the host (``[network] host`` of ``corral.toml``)."""
    from corral.compute.settings import load_settings

    return load_settings(ctx.home).network.host


def sync_host(ctx: Corral, session: Session | None = None) -> None:
    """Make the host's bridges, taps, dnsmasq processes and nftables match the networks and
    ports in the database, as ``session`` sees them (its uncommitted changes too); nothing
    when ``[network] host`` is off.

    :param session: the transaction of the change being made; a session of its own if
        ``None``.
    :raise CorralError: the host could not be made so (the change is not to be committed).
    """
    if not host_enabled(ctx):
        return
    if session is None:
        with ctx.db.session() as own:
            sync_host(ctx, own)
        return
    host = host_networking()
    networks = [network_of(row) for row in session.scalars(select(NetworkRow))]
    ports = [
        PortFacts(port.id, network, port.mac, port.address, vm, port.vm_id, port.nic)
        for port, network, vm in session.execute(
            select(PortRow, NetworkRow.name, VmRow.name)
            .join(NetworkRow, NetworkRow.id == PortRow.network_id)
            .join(VmRow, VmRow.id == PortRow.vm_id)
            .order_by(PortRow.id)
        )
    ]
    floating = floating_facts(ctx, session)
    from corral.compute.security import load_plan

    plan = host_plan(networks, ports, host.default_uplink(), floating)
    host.apply(replace(plan, security=load_plan(session)), ctx.home.root)


def floating_facts(ctx: Corral, session: Session) -> FloatingFacts:
    """The floating IPs in the database, and where they live (``corral.toml``)."""
    from corral.compute.settings import load_settings

    rows = list(session.scalars(select(FloatingIpRow).order_by(FloatingIpRow.address)))
    return FloatingFacts(
        addresses=tuple(r.address for r in rows),
        associated=tuple((r.address, r.port_id) for r in rows if r.port_id is not None),
        interface=load_settings(ctx.home).network.floating_interface,
    )


def restore_host(ctx: Corral) -> None:
    """After a refused change: the host as the committed networks say, as far as it goes
    (the refusal, not a failure here, is what the caller hears of)."""
    with contextlib.suppress(CorralError):
        sync_host(ctx)


def host_lock(ctx: Corral) -> ObjectLock:
    """The lock that serialises changes of the networks (subnets are checked against each
    other, and the host is changed whole)."""
    return ObjectLock(ctx.home.locks, "host", "networks")


class HostChange:
    """A change of the networks' records that the host follows (:func:`host_restored`)."""

    def __init__(self, ctx: Corral) -> None:
        self._ctx = ctx
        #: Whether the host was made to follow the change.
        self.touched = False

    def sync(self, session: Session) -> None:
        """Make the host match the records as ``session`` sees them (its change too).

        :raise CorralError: the host could not be made so.
        """
        self.touched = True
        sync_host(self._ctx, session)


@contextmanager
def host_restored(ctx: Corral) -> Iterator[HostChange]:
    """Around a change of the networks' records, entered before its transaction so that the
    commit is inside: when the change fails after the host was made to follow it (by the
    host itself, a later step, or the commit), the host is brought back to what the committed
    records say, as far as it goes; the change's own error is what the caller hears of."""
    change = HostChange(ctx)
    try:
        yield change
    except BaseException:
        if change.touched:
            restore_host(ctx)
        raise


# -- lookups ----------------------------------------------------------------------------------
