"""The host at a glance (vSphere's summary page): CPU, memory, datastore, VMs."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from corral.compute.context import Corral
from corral.store.models import VmRow

_lock = threading.Lock()
#: The previous (busy, total) jiffies, for usage since the previous call.
_previous: list[tuple[int, int]] = []


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpu_model: str
    cpus: int
    #: Percent of all CPUs busy since the previous call (since boot on the first).
    cpu_usage: float
    memory_total: int
    memory_used: int
    datastore: str
    datastore_capacity: int
    datastore_free: int
    accelerator: str
    qemu_version: str
    vms_running: int
    vms_total: int
    networks: list[str]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _cpu_usage() -> float:
    """Busy share of all CPUs, from ``/proc/stat``, since the previous call."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    busy = total - idle
    with _lock:
        before = _previous[-1] if _previous else (0, 0)
        _previous[:] = [(busy, total)]
    spent = total - before[1]
    return round(100.0 * (busy - before[0]) / spent, 1) if spent > 0 else 0.0


def _memory() -> tuple[int, int]:
    values: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    total = values.get("MemTotal", 0)
    return total, total - values.get("MemAvailable", 0)


def host_info(ctx: Corral) -> HostInfo:
    """What the host has and uses now."""
    stat = os.statvfs(ctx.home.root)
    total, used = _memory()
    with ctx.db.session() as session:
        vms_total = session.scalar(select(func.count()).select_from(VmRow)) or 0
        running = (
            session.scalar(
                select(func.count())
                .select_from(VmRow)
                .where(VmRow.state.in_(("running", "paused", "starting", "stopping")))
            )
            or 0
        )
    caps = ctx.caps
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_model=_cpu_model(),
        cpus=os.cpu_count() or 1,
        cpu_usage=_cpu_usage(),
        memory_total=total,
        memory_used=used,
        datastore=str(ctx.home.root),
        datastore_capacity=stat.f_blocks * stat.f_frsize,
        datastore_free=stat.f_bavail * stat.f_frsize,
        accelerator=caps.accel,
        qemu_version=".".join(map(str, caps.qemu_version)),
        vms_running=running,
        vms_total=vms_total,
        # User-mode NAT, the one network kind so far.
        networks=["user"],
    )
