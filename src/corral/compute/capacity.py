"""Whether the host can take N more instances of a size: checked before anything is created.

:func:`check` is pure; :func:`host_free` reads what the host has free now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.compute.settings import CapacitySettings
from corral.errors import InsufficientCapacity
from corral.units import format_size


@dataclass(frozen=True)
class Demand:
    """``count`` instances of one size."""

    count: int
    vcpus: int
    #: Guest memory of one instance, in bytes.
    memory: int
    #: Provisioned (virtual) disk of one instance, in bytes.
    disk: int


@dataclass(frozen=True)
class Free:
    """What the host has free now."""

    #: ``MemAvailable`` from ``/proc/meminfo``.
    memory: int
    #: Free bytes on the file system that holds the VMs' disks.
    disk: int
    #: Logical CPUs of the host.
    cpus: int


def check(demand: Demand, free: Free, policy: CapacitySettings) -> None:
    """Refuse a demand the host cannot hold.

    - vCPUs: one instance may not have more vCPUs than the host has CPUs (it would run
      slower than with fewer, as its vCPUs preempt each other).
    - Memory: all instances' memory must fit in what the host has available, less the
      reserve kept for the host itself. Guests touch their memory lazily, but a host that
      cannot back what it promised starts swapping or killing.
    - Disk: all instances' provisioned size must fit in the free space times the allocation
      ratio (1.0: fully backed; above 1: thin provisioning, overcommitted).

    :raise InsufficientCapacity: naming the resource, the need and what is free.
    """
    if demand.vcpus > free.cpus:
        raise InsufficientCapacity(
            "vcpus",
            demand.vcpus,
            free.cpus,
            f"the type has {demand.vcpus} vCPUs and this host has {free.cpus} CPUs; "
            "choose a smaller type",
        )
    memory = demand.count * demand.memory
    usable = max(0, free.memory - policy.memory_reserve)
    if memory > usable:
        raise InsufficientCapacity(
            "memory",
            memory,
            usable,
            f"{_times(demand.count)}{format_size(demand.memory)} needs {format_size(memory)}; "
            f"the host has {format_size(free.memory)} available, less "
            f"{format_size(policy.memory_reserve)} kept for itself",
        )
    disk = demand.count * demand.disk
    allowed = int(free.disk * policy.disk_allocation_ratio)
    if disk > allowed:
        ratio = policy.disk_allocation_ratio
        detail = f"{format_size(free.disk)} free"
        if ratio != 1.0:
            detail += f" x allocation ratio {ratio:g} = {format_size(allowed)}"
        raise InsufficientCapacity(
            "disk",
            disk,
            allowed,
            f"{_times(demand.count)}{format_size(demand.disk)} of disk needs {format_size(disk)}; "
            f"the state directory's file system has {detail} "
            "(capacity.disk_allocation_ratio in corral.toml allows thin provisioning)",
        )


def _times(count: int) -> str:
    return f"{count} x " if count > 1 else ""


def host_free(vms_dir: Path) -> Free:
    """What the host has free now, for instances whose disks go to ``vms_dir``."""
    available = 0
    with Path("/proc/meminfo").open() as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    stat = os.statvfs(vms_dir)
    return Free(
        memory=available,
        disk=stat.f_bavail * stat.f_frsize,
        cpus=len(os.sched_getaffinity(0)),
    )
