"""Loopback ports for SSH forwards: the lowest free one in the configured range.

A port is reserved by the VM spec that forwards it, so a port is taken as long as a VM
record names it (running or not) and free again when the VM is deleted. Choosing and
recording happen under one lock (:func:`ports_lock`); a port some other program has bound
is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterable

from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.errors import InsufficientCapacity
from corral.spec.vm import VmSpec
from corral.store.models import VmRow


def ports_lock(ctx: Corral) -> ObjectLock:
    """Held from choosing a port until the VM that forwards it is recorded."""
    return ObjectLock(ctx.home.locks, "ports", "host")


def reserved_ports(specs: Iterable[VmSpec]) -> set[int]:
    """Host TCP ports the given VMs forward."""
    return {
        forward.host_port
        for spec in specs
        for nic in spec.nics
        for forward in nic.forwards
        if forward.protocol == "tcp"
    }


def pick_port(reserved: set[int], low: int, high: int, bindable: Callable[[int], bool]) -> int:
    """The lowest port in ``low..high`` that is neither reserved nor bound by someone else.

    :raise InsufficientCapacity: every port of the range is taken.
    """
    for port in range(low, high + 1):
        if port not in reserved and bindable(port):
            return port
    size = high - low + 1
    raise InsufficientCapacity(
        "ports",
        1,
        0,
        f"all {size} ports of {low}-{high} are reserved or in use; "
        "widen launch.ssh_port_range in corral.toml",
    )


def bindable(addr: str) -> Callable[[int], bool]:
    """A test of whether ``addr:port`` can be bound now (TCP)."""

    def test(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((addr, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise
        return True

    return test


def reserved_by_records(ctx: Corral) -> set[int]:
    """Ports forwarded by every recorded VM."""
    specs: list[VmSpec] = []
    with ctx.db.session() as session:
        for raw in session.scalars(select(VmRow.spec)):
            with contextlib.suppress(ValueError):
                specs.append(VmSpec.model_validate_json(raw))
    return reserved_ports(specs)
