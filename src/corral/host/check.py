"""A ``virt-host-validate``-like report: can this host run corral's guests, and how well?

Two steps, so the verdicts are testable without the host: :func:`gather_facts` reads the host
(files, ``statvfs``, one ``qemu-img --version``) into a :class:`HostFacts`; :func:`evaluate`
turns facts into :class:`Check` rows and touches nothing. :func:`run_checks` does both and
:func:`exit_status` summarises (non-zero when any check FAILs).

FAIL means corral cannot work (no QEMU, no accelerator at all, no qemu-img, under 1 GiB of disk);
WARN means something works worse or is unavailable (TCG instead of KVM, no UEFI firmware, no
bridges, little disk or memory).
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from corral.host import kvm
from corral.host.caps import ACCEL_ENV, HostCaps, read_meminfo
from corral.units import GiB, MiB, format_size

#: Free disk in the state directory below which the check warns / fails.
DISK_WARN = 5 * GiB
DISK_FAIL = 1 * GiB
#: Available memory below which the check warns.
MEMORY_WARN = 512 * MiB


class Status(StrEnum):
    """The verdict of one check."""

    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One row of the report."""

    #: What was checked (``KVM self-test``).
    name: str
    #: PASS, WARN or FAIL.
    status: Status
    #: What was found, and for WARN/FAIL what it means or how to fix it.
    detail: str


@dataclass(frozen=True)
class HostFacts:
    """Everything :func:`evaluate` judges, gathered by :func:`gather_facts`."""

    #: The probed capabilities; None when probing failed.
    caps: HostCaps | None
    #: Why probing failed (None when it did not).
    probe_error: str | None = None
    #: ``$CORRAL_ACCEL`` as set (``kvm``, ``tcg``) or None.
    accel_override: str | None = None
    #: ``/dev/kvm`` exists.
    kvm_device: bool = False
    #: Why ``/dev/kvm`` cannot be used (None when it can).
    kvm_problem: str | None = None
    #: ``vmx``, ``svm`` or None, from ``/proc/cpuinfo``.
    virt_flag: str | None = None
    #: Loaded KVM vendor modules (``kvm_intel``, ``kvm_amd``, ``kvm_pvm``).
    kvm_modules: tuple[str, ...] = ()
    #: ``/dev/net/tun`` is a character device.
    tun: bool = False
    #: How bridges are supported: ``loaded``, ``module`` (loadable) or None.
    bridge: str | None = None
    #: ``qemu-img``'s path, or None.
    qemu_img: str | None = None
    #: ``qemu-img --version``'s first line, or why it could not be run.
    qemu_img_version: str = ""
    #: The state directory (or its nearest existing parent) and its free bytes.
    disk_dir: str = ""
    disk_free: int | None = None
    #: ``MemTotal`` and ``MemAvailable`` in bytes.
    memory_total: int = 0
    memory_available: int = 0
    #: Extra notes (not judged), for callers that want to show them.
    notes: tuple[str, ...] = field(default=())


# --- Gathering --------------------------------------------------------------------------------


def _bridge_support(release: str) -> str | None:
    if Path("/sys/module/bridge").exists() or Path("/proc/sys/net/bridge").exists():
        return "loaded"
    module_dir = Path("/lib/modules", release, "kernel/net/bridge")
    if module_dir.is_dir() and any(module_dir.glob("bridge.ko*")):
        return "module"
    return None


def _qemu_img_version(path: str) -> str:
    import subprocess

    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run: {exc}"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return f"--version failed with status {done.returncode}"
    return lines[0]


def _free_space(directory: Path) -> tuple[str, int | None]:
    """Free bytes (for unprivileged users) in ``directory`` or its nearest existing parent."""
    current = directory.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        st = os.statvfs(current)
    except OSError:
        return str(current), None
    return str(current), st.f_bavail * st.f_frsize


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(Path(path).stat().st_mode)
    except OSError:
        return False


def gather_facts(
    caps: HostCaps | None, home_dir: Path, probe_error: str | None = None
) -> HostFacts:
    """Read the host facts the checks judge.

    :param caps: the probed capabilities (None when probing failed).
    :param home_dir: corral's state directory (need not exist yet).
    :param probe_error: why probing failed, shown in the QEMU check.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    qemu_img = shutil.which("qemu-img")
    disk_dir, disk_free = _free_space(home_dir)
    meminfo = read_meminfo()
    override = os.environ.get(ACCEL_ENV, "").strip().lower() or None
    return HostFacts(
        caps=caps,
        probe_error=probe_error,
        accel_override=override if override in ("kvm", "tcg") else None,
        kvm_device=Path("/dev/kvm").exists(),
        kvm_problem=kvm.dev_kvm_problem(),
        virt_flag=kvm.cpu_virt_flag(cpuinfo),
        kvm_modules=tuple(kvm.kvm_modules()),
        tun=_is_char_device("/dev/net/tun"),
        bridge=_bridge_support(os.uname().release),
        qemu_img=qemu_img,
        qemu_img_version=_qemu_img_version(qemu_img) if qemu_img else "",
        disk_dir=disk_dir,
        disk_free=disk_free,
        memory_total=meminfo.get("MemTotal", 0),
        memory_available=meminfo.get("MemAvailable", 0),
    )


# --- Judging (pure) ---------------------------------------------------------------------------

_NOT_PROBED = "not checked: QEMU could not be probed"


def _qemu_checks(f: HostFacts) -> list[Check]:
    caps = f.caps
    if caps is None:
        detail = f.probe_error or "not found; install it with: apt-get install qemu-system-x86"
        return [Check("QEMU", Status.FAIL, detail)]
    version = ".".join(str(part) for part in caps.qemu_version)
    return [Check("QEMU", Status.PASS, f"{caps.qemu_binary} {version}")]


def _kvm_checks(f: HostFacts) -> list[Check]:
    out: list[Check] = []
    if not f.kvm_device:
        out.append(
            Check(
                "/dev/kvm present",
                Status.WARN,
                "missing: no KVM module loaded, or virtualization disabled in firmware",
            )
        )
    else:
        out.append(Check("/dev/kvm present", Status.PASS, "yes"))
        if f.kvm_problem is None:
            out.append(Check("/dev/kvm accessible", Status.PASS, "read/write"))
        else:
            out.append(Check("/dev/kvm accessible", Status.WARN, f.kvm_problem))
    modules = f", KVM module: {', '.join(f.kvm_modules)}" if f.kvm_modules else ""
    if f.virt_flag is not None:
        name = "Intel VT-x" if f.virt_flag == "vmx" else "AMD-V"
        out.append(Check("CPU virtualization", Status.PASS, f"{f.virt_flag} ({name}){modules}"))
    elif "kvm_pvm" in f.kvm_modules:
        out.append(
            Check(
                "CPU virtualization",
                Status.WARN,
                "no vmx/svm in CPU flags; KVM here is kvm_pvm (KVM without hardware "
                "virtualization: only PVM-aware guest kernels run at full speed)",
            )
        )
    else:
        out.append(
            Check(
                "CPU virtualization",
                Status.WARN,
                f"no vmx/svm in CPU flags (disabled in firmware, or nested virtualization "
                f"off){modules}",
            )
        )
    out.append(_selftest_check(f))
    return out


def _selftest_check(f: HostFacts) -> Check:
    caps = f.caps
    name = "KVM self-test"
    if caps is None:
        return Check(name, Status.WARN, _NOT_PROBED)
    if caps.accel == "kvm":
        if f.accel_override == "kvm":
            return Check(name, Status.WARN, f"skipped: KVM forced by {ACCEL_ENV}=kvm")
        return Check(name, Status.PASS, caps.kvm_test or "KVM in use")
    reason = caps.kvm_reason.removeprefix("KVM self-test failed: ")  # the row says so
    return Check(name, Status.WARN, f"falling back to TCG (slow): {reason}")


def _tcg_check(f: HostFacts) -> Check:
    caps = f.caps
    if caps is None:
        return Check("TCG", Status.WARN, _NOT_PROBED)
    if "tcg" in caps.accelerators:
        return Check("TCG", Status.PASS, "available (software emulation)")
    if caps.accel == "kvm":
        return Check("TCG", Status.WARN, "this QEMU has no TCG (fine while KVM works)")
    return Check("TCG", Status.FAIL, "this QEMU has no TCG and KVM is unusable: no guest can run")


def _network_checks(f: HostFacts) -> list[Check]:
    tun = (
        Check("/dev/net/tun", Status.PASS, "present")
        if f.tun
        else Check(
            "/dev/net/tun", Status.WARN, "missing: tap networking unavailable (modprobe tun)"
        )
    )
    if f.bridge == "loaded":
        bridge = Check("Bridge support", Status.PASS, "bridge module loaded")
    elif f.bridge == "module":
        bridge = Check("Bridge support", Status.PASS, "bridge module available (loads on use)")
    else:
        bridge = Check(
            "Bridge support", Status.WARN, "no bridge module: bridged networks unavailable"
        )
    return [tun, bridge]


def _storage_checks(f: HostFacts) -> list[Check]:
    if f.qemu_img is None:
        img = Check(
            "qemu-img", Status.FAIL, "not found; install it with: apt-get install qemu-utils"
        )
    elif "version" in f.qemu_img_version:
        img = Check("qemu-img", Status.PASS, f"{f.qemu_img}: {f.qemu_img_version}")
    else:
        img = Check("qemu-img", Status.FAIL, f"{f.qemu_img}: {f.qemu_img_version}")
    if f.disk_free is None:
        disk = Check("Disk space", Status.WARN, f"cannot read free space of {f.disk_dir}")
    else:
        text = f"{format_size(f.disk_free)} free in {f.disk_dir}"
        if f.disk_free < DISK_FAIL:
            disk = Check(
                "Disk space", Status.FAIL, f"{text} (need at least {format_size(DISK_FAIL)})"
            )
        elif f.disk_free < DISK_WARN:
            disk = Check("Disk space", Status.WARN, f"{text} (less than {format_size(DISK_WARN)})")
        else:
            disk = Check("Disk space", Status.PASS, text)
    return [img, disk]


def _memory_check(f: HostFacts) -> Check:
    if not f.memory_total:
        return Check("Memory", Status.WARN, "cannot read /proc/meminfo")
    text = f"{format_size(f.memory_total)} total, {format_size(f.memory_available)} available"
    if f.memory_available < MEMORY_WARN:
        return Check("Memory", Status.WARN, f"{text} (less than {format_size(MEMORY_WARN)})")
    return Check("Memory", Status.PASS, text)


def _qemu_feature_checks(f: HostFacts) -> list[Check]:
    caps = f.caps
    if caps is None:
        return [
            Check("Seccomp sandbox", Status.WARN, _NOT_PROBED),
            Check("UEFI firmware (OVMF)", Status.WARN, _NOT_PROBED),
        ]
    seccomp = (
        Check("Seccomp sandbox", Status.PASS, "QEMU supports -sandbox")
        if caps.seccomp
        else Check(
            "Seccomp sandbox",
            Status.WARN,
            "QEMU has no -sandbox: guests run without a syscall filter",
        )
    )
    if caps.ovmf_code:
        vars_text = f" (vars template {caps.ovmf_vars})" if caps.ovmf_vars else ""
        ovmf = Check("UEFI firmware (OVMF)", Status.PASS, caps.ovmf_code + vars_text)
    else:
        ovmf = Check(
            "UEFI firmware (OVMF)",
            Status.WARN,
            "not found: UEFI guests unavailable (apt-get install ovmf)",
        )
    return [seccomp, ovmf]


def evaluate(facts: HostFacts) -> list[Check]:
    """Judge the facts. Pure: no I/O.

    :param facts: from :func:`gather_facts` (or built by hand in tests).
    """
    return [
        *_qemu_checks(facts),
        *_kvm_checks(facts),
        _tcg_check(facts),
        *_network_checks(facts),
        *_storage_checks(facts),
        _memory_check(facts),
        *_qemu_feature_checks(facts),
    ]


def run_checks(
    caps: HostCaps | None, home_dir: Path, probe_error: str | None = None
) -> list[Check]:
    """Gather the host's facts and judge them.

    :param caps: the probed capabilities (None when probing failed).
    :param home_dir: corral's state directory (need not exist yet).
    :param probe_error: why probing failed, shown in the QEMU check.
    """
    return evaluate(gather_facts(caps, home_dir, probe_error))


def exit_status(checks: list[Check]) -> int:
    """1 when any check FAILed, else 0 (warnings do not fail).

    :param checks: the report.
    """
    return 1 if any(c.status is Status.FAIL for c in checks) else 0
