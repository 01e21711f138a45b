"""The ports of a VM's NICs on virtual networks, made and removed with the VM.

A VM defined with NICs of kind ``network`` gets a port on each NIC's network in the
transaction that inserts its record (:func:`allocate_vm_ports`): a MAC no other NIC of the
host has, written into the NIC's spec so that it never changes, and on a managed network an
address from its subnet (the NIC's fixed ``ip``, or the lowest free one). The host is made to
match (:func:`host_change`) inside that transaction: a refusal by the host rolls the record
back, and the host goes back to what the committed rows say. Deleting the VM removes its ports
and what the host had for them the same way.

A network is reached by the VMs of its own project: a network of another project answers
:class:`~corral.errors.NotFound`, as one that does not exist.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.compute.addresses import allocate_port
from corral.compute.context import Corral
from corral.compute.network_host import host_lock, restore_host, sync_host
from corral.errors import NotFound
from corral.spec.vm import VmSpec
from corral.store.models import NetworkRow, PortRow, VmRow


def network_nics(spec: VmSpec) -> list[int]:
    """The positions of ``spec``'s NICs on virtual networks."""
    return [i for i, nic in enumerate(spec.nics) if nic.kind == "network"]


def allocate_vm_ports(session: Session, row: VmRow, spec: VmSpec) -> VmSpec:
    """Give each network NIC of ``spec`` a port, in ``session``'s transaction (``row`` is the
    VM's record, added to the session); ``spec`` with each such NIC's MAC fixed, also
    written to ``row``.

    :raise NotFound: a NIC's network does not exist or is another project's (field
        ``nics.<i>.network`` in the message).
    :raise InvalidInput: a NIC's MAC or fixed address does not fit its network.
    :raise Conflict: the MAC or address is taken, or the network has no free address.
    """
    indexes = network_nics(spec)
    if not indexes:
        return spec
    session.flush()  # the record first: ports refer to it
    nics = list(spec.nics)
    for index in indexes:
        nic = nics[index]
        assert nic.network is not None
        network = session.scalars(
            select(NetworkRow).where(
                NetworkRow.name == nic.network, NetworkRow.project_id == row.project_id
            )
        ).first()
        if network is None:
            raise NotFound("network", nic.network)
        port = allocate_port(
            session,
            row,
            nic.name,
            network,
            mac=nic.mac,
            ip=None if nic.ip is None else str(nic.ip),
        )
        nics[index] = nic.model_copy(update={"mac": port.mac})
    fixed = spec.model_copy(update={"nics": tuple(nics)})
    row.spec = fixed.model_dump_json()
    return fixed


def vm_addresses(session: Session, vm_id: str) -> dict[str, ipaddress.IPv4Address]:
    """The addresses of a VM's NICs on managed networks, by NIC name."""
    query = select(PortRow.nic, PortRow.address).where(
        PortRow.vm_id == vm_id, PortRow.address.is_not(None)
    )
    return {nic: ipaddress.IPv4Address(a) for nic, a in session.execute(query) if a is not None}


def first_address(session: Session, spec: VmSpec) -> ipaddress.IPv4Address | None:
    """The address of ``spec``'s first NIC on a managed network (``None``: it has none)."""
    found = vm_addresses(session, str(spec.uuid))
    for nic in spec.nics:
        if nic.kind == "network" and nic.name in found:
            return found[nic.name]
    return None


@contextmanager
def host_change(ctx: Corral, spec: VmSpec) -> Iterator[bool]:
    """Around a transaction that adds or removes ``spec``'s ports: holds the lock of the
    host's networks (taken before the transaction writes, as network changes take it) and,
    when the block's transaction could not be committed, brings the host back to what the
    committed rows say. Yields whether ``spec`` has network NICs (nothing is locked if not).
    """
    if not network_nics(spec):
        yield False
        return
    with host_lock(ctx):
        try:
            yield True
        except BaseException:
            restore_host(ctx)
            raise


def sync_for_start(ctx: Corral, spec: VmSpec) -> None:
    """Before QEMU starts a VM with network NICs: the host has their taps, leases and DNS
    names (idempotent: a host that has them is left as it is).

    :raise CorralError: the host could not be made so.
    """
    if not network_nics(spec):
        return
    with host_lock(ctx):
        sync_host(ctx)
