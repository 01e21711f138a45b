"""Host capabilities: what this QEMU binary and this host can do, as data.

The data model is in :mod:`corral.host.models` (re-exported here); :func:`probe` asks the binary
once (:mod:`corral.host.qemu_probe`, QMP on ``-machine none``), adds the host's facts
(:mod:`corral.host.facts`) and the KVM verdict (:mod:`corral.host.kvm`), and caches the result
by the binary's identity, so every later command reads a small JSON file instead of starting
QEMU.

The cache (``<cache_dir>/hostcaps-<hash of the binary's real path>.json``) has two parts:

- what QEMU answered, valid while the binary's real path, size, mtime and inode are unchanged;
- the KVM self-test verdict (:mod:`corral.host.kvm`), valid additionally only for the same
  kernel boot (``/proc/sys/kernel/random/boot_id``), the same CPU model and the same state of
  ``/dev/kvm`` (present, accessible), which is checked on every load.

Facts that are cheap and can change at any time (host CPUs and memory, OVMF firmware,
``/dev/vhost-net``, the ``CORRAL_ACCEL`` override) are read on every call, never cached.

The accelerator is chosen by :func:`decide_accel`: ``$CORRAL_ACCEL=tcg`` forces TCG,
``$CORRAL_ACCEL=kvm`` forces KVM without a test; otherwise KVM only when this QEMU has it,
``/dev/kvm`` is usable and the functional self-test passed; else TCG, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from corral.errors import InvalidInput
from corral.host.facts import (
    QEMU_ENV,
    QEMU_FALLBACKS,
    binary_identity,
    boot_id,
    find_ovmf,
    find_qemu,
    host_cpus,
    parse_meminfo,
    pick_ovmf,
    read_meminfo,
)
from corral.host.models import HostCaps, MachineType
from corral.host.qemu_probe import (
    PROBE_TIMEOUT,
    parse_machines,
    parse_probe,
    parse_version,
    probe_argv,
    query_qemu,
)

if TYPE_CHECKING:
    from corral.host.kvm import KvmVerdict

__all__ = [
    "ACCEL_ENV",
    "PROBE_TIMEOUT",
    "QEMU_ENV",
    "QEMU_FALLBACKS",
    "HostCaps",
    "MachineType",
    "accel_override",
    "binary_identity",
    "boot_id",
    "decide_accel",
    "find_ovmf",
    "find_qemu",
    "host_cpus",
    "parse_machines",
    "parse_meminfo",
    "parse_probe",
    "parse_version",
    "pick_ovmf",
    "probe",
    "probe_argv",
    "query_qemu",
    "read_meminfo",
    "vhost_net_usable",
]

_log = logging.getLogger(__name__)

#: Environment variable forcing the accelerator: ``kvm``, ``tcg`` or ``auto`` (the default).
ACCEL_ENV = "CORRAL_ACCEL"
#: Version of the cache file layout; older files are ignored (2: display front ends).
CACHE_FORMAT = 2
#: The kernel's vhost-net device: virtio-net's data path in the host kernel instead of QEMU.
VHOST_NET = "/dev/vhost-net"


def vhost_net_usable(path: str = VHOST_NET) -> bool:
    """Whether ``path`` is a character device this process may open for reading and
    writing, as QEMU must to give a tap NIC ``vhost``. Nothing is opened.

    :param path: the device node; default :data:`VHOST_NET`.
    """
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) and os.access(path, os.R_OK | os.W_OK)


# --- Accelerator choice -----------------------------------------------------------------------


def accel_override() -> Literal["kvm", "tcg"] | None:
    """``$CORRAL_ACCEL`` as ``kvm`` / ``tcg``, or None for automatic choice.

    :raise InvalidInput: the variable has another value.
    """
    value = os.environ.get(ACCEL_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value == "kvm":
        return "kvm"
    if value == "tcg":
        return "tcg"
    raise InvalidInput(ACCEL_ENV, f"must be kvm, tcg or auto, not {value!r}")


def decide_accel(
    override: Literal["kvm", "tcg"] | None,
    accelerators: frozenset[str],
    device_problem: str | None,
    verdict: KvmVerdict | None,
) -> tuple[Literal["kvm", "tcg"], str]:
    """Which accelerator to use and why KVM is not (empty reason when it is). Pure.

    :param override: ``$CORRAL_ACCEL`` (see :func:`accel_override`).
    :param accelerators: those compiled into QEMU.
    :param device_problem: why ``/dev/kvm`` cannot be used, None when it can.
    :param verdict: the self-test's verdict (None when it did not run).
    """
    if override == "tcg":
        return "tcg", f"forced by {ACCEL_ENV}=tcg"
    if override == "kvm":
        return "kvm", ""
    reason: str
    if "kvm" not in accelerators:
        reason = "this QEMU was built without KVM support"
    elif device_problem is not None:
        reason = device_problem
    elif verdict is None:
        reason = "KVM self-test did not run"
    elif verdict.usable:
        return "kvm", ""
    else:
        reason = verdict.reason
    if "tcg" not in accelerators:
        reason += "; this QEMU has no TCG either, so it cannot run guests"
    return "tcg", reason


# --- Cache ------------------------------------------------------------------------------------


def cache_path(cache_dir: Path, real_binary: str) -> Path:
    """The cache file for one binary.

    :param cache_dir: the cache directory.
    :param real_binary: the binary's real path.
    """
    digest = hashlib.sha256(real_binary.encode()).hexdigest()[:16]
    return cache_dir / f"hostcaps-{digest}.json"


def read_cache(path: Path) -> dict[str, Any] | None:
    """A cache file's content, or None if it is missing, unreadable or of another format.

    :param path: the cache file.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    return data


def write_cache(path: Path, data: dict[str, Any]) -> None:
    """Write a cache file atomically (temporary file + rename); failures are only logged.

    :param path: the cache file.
    :param data: its content.
    """
    import tempfile

    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)  # not secret; mkstemp's 0600 would hide it from other users
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, sort_keys=True)
        Path(tmp).replace(path)
    except OSError as exc:
        _log.warning("cannot write host capability cache %s: %s", path, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def kvm_entry_valid(entry: Any, current_boot: str, cpu: str, device_state: str) -> bool:
    """Whether a cached KVM verdict still holds. Pure.

    :param entry: the cache's ``kvm`` part.
    :param current_boot: the running kernel's boot id.
    :param cpu: the CPU model the test must have used.
    :param device_state: ``/dev/kvm``'s problem now ('' when usable).
    """
    return (
        isinstance(entry, dict)
        and bool(current_boot)
        and entry.get("boot_id") == current_boot
        and entry.get("cpu") == cpu
        and entry.get("device") == device_state
        and isinstance(entry.get("usable"), bool)
        and isinstance(entry.get("reason"), str)
    )


# --- The probe --------------------------------------------------------------------------------


def probe(
    qemu_binary: str | None = None, cache_dir: Path | None = None, refresh: bool = False
) -> HostCaps:
    """What this host and its QEMU can do, from the cache when it is still valid.

    A cold probe starts QEMU once (about 0.1 s) and, when KVM is a candidate, runs the KVM
    self-test (well under a second when KVM works, its deadline when it does not); a cached
    probe starts nothing.

    :param qemu_binary: the binary; default :func:`find_qemu`.
    :param cache_dir: where the cache lives; default :func:`corral.config.default_cache`.
    :param refresh: ignore the cache (it is rewritten).
    :raise HostError: no QEMU, or it cannot be probed.
    :raise InvalidInput: ``$CORRAL_ACCEL`` has an unknown value.
    """
    from corral.host import kvm

    override = accel_override()
    binary = find_qemu() if qemu_binary is None else _absolute_binary(qemu_binary)
    identity = binary_identity(binary)
    if cache_dir is None:
        from corral.config import default_cache

        cache_dir = default_cache()
    path = cache_path(cache_dir, identity["path"])
    cached = None if refresh else read_cache(path)
    dirty = False
    if cached is not None and cached.get("binary") == identity and "qemu" in cached:
        qemu_part: dict[str, Any] = cached["qemu"]
        kvm_part = cached.get("kvm")
    else:
        qemu_part = query_qemu(binary)
        kvm_part = None
        dirty = True
    accelerators = frozenset(qemu_part.get("accelerators", ()))

    device_problem = kvm.dev_kvm_problem()
    current_boot = boot_id()
    cpu = kvm.KVM_CPU
    verdict: KvmVerdict | None = None
    if kvm_entry_valid(kvm_part, current_boot, cpu, device_problem or ""):
        assert isinstance(kvm_part, dict)
        verdict = kvm.KvmVerdict(
            kvm_part["usable"], kvm_part["reason"], float(kvm_part.get("seconds", 0.0))
        )
    elif override is None and "kvm" in accelerators and device_problem is None:
        verdict = kvm.self_test(binary, cpu=cpu)
        kvm_part = {
            "boot_id": current_boot,
            "cpu": cpu,
            "device": "",
            "usable": verdict.usable,
            "reason": verdict.reason,
            "seconds": round(verdict.seconds, 3),
        }
        dirty = True
    if dirty:
        write_cache(
            path,
            {"format": CACHE_FORMAT, "binary": identity, "qemu": qemu_part, "kvm": kvm_part},
        )

    accel, reason = decide_accel(override, accelerators, device_problem, verdict)
    ovmf_code, ovmf_vars = find_ovmf()
    try:
        return HostCaps(
            qemu_binary=binary,
            qemu_version=tuple(qemu_part["version"]),
            machines=qemu_part["machines"],
            devices=frozenset(qemu_part["devices"]),
            accelerators=accelerators,
            accel=accel,
            kvm_reason=reason,
            seccomp=bool(qemu_part["seccomp"]),
            ovmf_code=ovmf_code,
            ovmf_vars=ovmf_vars,
            host_cpus=host_cpus(),
            host_memory=read_meminfo().get("MemTotal", 0),
            cpu_models=frozenset(qemu_part.get("cpu_models", [])),
            kvm_test=verdict.reason if verdict is not None else "",
            displays=frozenset(qemu_part.get("displays", ["none"])),
            vhost_net=vhost_net_usable(),
        )
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        if dirty:  # fresh from QEMU: a bug, not a stale file
            raise
        _log.warning("ignoring unusable host capability cache %s", path)
        return probe(binary, cache_dir, refresh=True)


def _absolute_binary(binary: str) -> str:
    """``binary`` as an absolute path, looked up on ``$PATH`` when it is a bare name."""
    if os.sep not in binary:
        found = shutil.which(binary)
        if found:
            return str(Path(found).absolute())
    return str(Path(binary).absolute())
