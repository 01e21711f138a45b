"""Address management: the ports guests' NICs have on virtual networks.

A port is a row (:class:`~corral.store.models.PortRow`) written in the transaction that adds
the NIC, and removed in the one that removes it: its MAC is unique on the host (under QEMU's
locally administered prefix, :data:`~corral.net.ipam.MAC_PREFIX`), its address, on a managed
network, unique within the network. The choice is :mod:`corral.net.ipam`'s (pure); the
table's constraints hold it even against a concurrent writer.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.compute.network_host import network_of
from corral.errors import Conflict, InvalidInput
from corral.net import ipam
from corral.store.models import NetworkRow, PortRow, VmRow

#: What a MAC given for a port must look like (lower-case, as corral stores them).
MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def allocate_port(
    session: Session,
    vm: VmRow,
    nic: str,
    network: NetworkRow,
    mac: str | None = None,
    ip: str | None = None,
) -> PortRow:
    """Give NIC ``nic`` of ``vm`` a port on ``network``, in ``session``'s transaction: a MAC
    no NIC of the host has and, on a managed network, the lowest free address.

    :param mac: the MAC asked for (field ``mac``); a random free one when ``None``.
    :param ip: the address asked for (field ``ip``; managed networks only).
    :raise InvalidInput: a bad MAC or address, or an address on a bridged network.
    :raise Conflict: the MAC or address is taken, or no address is free.
    """
    spec = network_of(network)
    macs = set(session.scalars(select(PortRow.mac)))
    if mac is None:
        mac = ipam.free_mac(macs)
    else:
        mac = mac.lower()
        if not MAC_PATTERN.match(mac) or int(mac[:2], 16) & 1:
            raise InvalidInput("mac", f"{mac!r} is not a unicast MAC like 52:54:00:12:34:56")
        if mac in macs:
            raise Conflict(f"MAC address {mac} is taken")
    address: str | None = None
    if spec.managed:
        taken = {
            ipaddress.IPv4Address(a)
            for a in session.scalars(
                select(PortRow.address).where(
                    PortRow.network_id == network.id, PortRow.address.is_not(None)
                )
            )
            if a is not None
        }
        if ip is None:
            address = str(ipam.free_address(spec, taken))
        else:
            try:
                wanted = ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput("ip", f"{ip!r} is not an IPv4 address") from None
            ipam.check_address(spec, wanted, taken)
            address = str(wanted)
    elif ip is not None:
        raise InvalidInput(
            "ip", f"network {spec.name!r} is bridged: its addresses are not corral's"
        )
    port = PortRow(
        id=str(uuid.uuid4()), vm_id=vm.id, nic=nic, network_id=network.id, mac=mac, address=address
    )
    session.add(port)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"NIC {nic!r} of vm {vm.name!r}, MAC {mac} or address {address} is taken"
        ) from exc
    return port


def release_ports(session: Session, vm: VmRow) -> int:
    """Remove every port of ``vm``, in ``session``'s transaction; how many there were."""
    ports = list(session.scalars(select(PortRow).where(PortRow.vm_id == vm.id)))
    for port in ports:
        session.delete(port)
    session.flush()
    return len(ports)
