"""The functional KVM self-test: does a guest actually *run* under ``-accel kvm`` here?

``/dev/kvm`` existing, opening and answering ``KVM_CREATE_VM`` is not proof that guests work.
:func:`self_test` boots a tiny hand-assembled payload with QEMU and accepts KVM only when the
payload prints :data:`MARKER` on the serial port *and* leaves QEMU through ``isa-debug-exit``
with :data:`OK_STATUS`, within a short deadline (:data:`DEFAULT_TIMEOUT`).

The payload itself, and the protocol it speaks on the serial port and through
``isa-debug-exit``, live in :mod:`corral.host.payload`; this module runs it under QEMU
(:func:`run_payload`), judges the outcome (:func:`interpret`, pure) and checks the host's
``/dev/kvm``, CPU flags and KVM modules. The payload's public names are re-exported here.

What discriminates, measured on the development machines (Debian 12, QEMU 7.2, whose KVM is
the ``kvm_pvm`` module and whose CPU flags show neither ``vmx`` nor ``svm``):

- A Debian 6.1 kernel prints ``Probing EDD`` and then seems to hang. It does not hang: QEMU's
  monitor shows it in 64-bit mode inside the decompressor with its registers moving, slowly.
- A payload that only reaches 64-bit mode and prints a marker *passes* there: SeaBIOS and the
  mode switches take about 2.2 s instead of 0.1 s, but they finish. So "reached long mode" is
  not enough.
- The stage-3 loop is the discriminator. Given 40 s, the whole payload passes there in about
  35 s, i.e. guest code runs at about 2 M instructions per second (emulated, not executed);
  under TCG the whole run takes 0.12-0.25 s (the loop about 65 ms), and native KVM runs the
  loop in milliseconds. With the 3 s deadline the test fails there after printing ``S2``, and
  the reason says the loop did not finish. Timer interrupts (stage 4) do work there.
- ``-cpu host`` / ``-cpu max`` did not abort there when this was measured (MACHINE.md reports
  an abort on MSR 0x10a); the test runs with the model guests get under KVM
  (:data:`KVM_CPU`, ``host``, as :mod:`corral.qemu.argv` chooses), so a QEMU that aborts with
  it is caught, and reported with its last line of stderr.

A working KVM passes in well under a second, most of it QEMU start-up and SeaBIOS.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corral.host.payload import (
    DEBUG_EXIT_PORT,
    DEFAULT_WORK,
    FAIL_STATUS,
    FAIL_VALUE,
    FAILURES,
    MARKER,
    OK_STATUS,
    OK_VALUE,
    STAGES,
    TIMER_TICKS,
    build_payload,
    payload_listing,
    work_checksum,
)

__all__ = [
    "DEBUG_EXIT_PORT",
    "DEFAULT_CPU",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORK",
    "FAILURES",
    "FAIL_STATUS",
    "FAIL_VALUE",
    "KVM_CPU",
    "MARKER",
    "OK_STATUS",
    "OK_VALUE",
    "STAGES",
    "TIMER_TICKS",
    "KvmVerdict",
    "PayloadRun",
    "build_payload",
    "cpu_virt_flag",
    "dev_kvm_problem",
    "interpret",
    "kvm_modules",
    "payload_argv",
    "payload_listing",
    "run_payload",
    "self_test",
    "work_checksum",
]

#: CPU model for :func:`run_payload` unless told otherwise: conservative, accepted by KVM and TCG.
DEFAULT_CPU = "qemu64"
#: CPU model :func:`self_test` uses: the one guests get under KVM (``corral.qemu.argv``).
KVM_CPU = "host"
#: Deadline for one run of the payload.
DEFAULT_TIMEOUT = 3.0


@dataclass(frozen=True)
class KvmVerdict:
    """Whether KVM can run guests here, and why (not)."""

    #: True when the payload passed under KVM.
    usable: bool
    #: What happened, in one line (why KVM is not usable, or what passed).
    reason: str
    #: Wall time of the test run (0 when no guest was started).
    seconds: float


@dataclass(frozen=True)
class PayloadRun:
    """The raw outcome of one run of the payload under QEMU."""

    #: QEMU's exit status (negative: killed by that signal), None if it was killed at the deadline.
    exitcode: int | None
    #: Everything the payload wrote to its serial port.
    serial: bytes
    #: QEMU's standard error.
    stderr: str
    #: Wall time from start to exit (or kill).
    seconds: float
    #: The deadline used.
    timeout: float


def payload_argv(
    qemu: str, payload: str, serial_log: str, accel: str, cpu: str = DEFAULT_CPU
) -> list[str]:
    """The QEMU command line that runs the payload.

    :param qemu: the QEMU binary.
    :param payload: path of the image from :func:`build_payload`.
    :param serial_log: file that receives the serial output.
    :param accel: ``kvm`` or ``tcg``.
    :param cpu: the ``-cpu`` model.
    """
    return [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-machine",
        f"pc,accel={accel}",
        "-cpu",
        cpu,
        "-m",
        "32",
        "-smp",
        "1",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial_log}",
        "-device",
        f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
        "-kernel",
        payload,
    ]


def run_payload(
    qemu: str,
    accel: str,
    cpu: str = DEFAULT_CPU,
    timeout: float = DEFAULT_TIMEOUT,
    work: int = DEFAULT_WORK,
) -> PayloadRun:
    """Boot the payload once and collect what happened; QEMU is killed at the deadline.

    :param qemu: the QEMU binary.
    :param accel: ``kvm`` or ``tcg``.
    :param cpu: the ``-cpu`` model.
    :param timeout: seconds before QEMU is killed.
    :param work: iterations of the stage-3 loop.
    :raise OSError: the binary cannot be started or the temporary files cannot be written.
    """
    with tempfile.TemporaryDirectory(prefix="corral-kvmtest-") as tmp:
        payload = Path(tmp) / "payload.bin"
        serial_log = Path(tmp) / "serial.log"
        payload.write_bytes(build_payload(work))
        argv = payload_argv(qemu, str(payload), str(serial_log), accel, cpu)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        exitcode: int | None
        try:
            _, err = proc.communicate(timeout=timeout)
            exitcode = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            exitcode = None
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt): never leave it running
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - start
        serial = serial_log.read_bytes() if serial_log.exists() else b""
    return PayloadRun(
        exitcode=exitcode,
        serial=serial,
        stderr=err.decode(errors="replace"),
        seconds=seconds,
        timeout=timeout,
    )


def _last_error_line(stderr: str, warnings: bool = True) -> str:
    """QEMU's last line of stderr that is not a warning; with ``warnings``, else its last line.

    :param stderr: QEMU's standard error.
    :param warnings: fall back to a warning when there is no other line.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "warning:" not in line and "terminating on" not in line]
    if errors:
        return errors[-1]
    return lines[-1] if lines and warnings else ""


def interpret(run: PayloadRun, work: int = DEFAULT_WORK) -> KvmVerdict:
    """Turn a :class:`PayloadRun` into a verdict. Pure.

    The payload passed only when :data:`MARKER` arrived *and* QEMU exited with
    :data:`OK_STATUS`.

    :param run: the outcome of :func:`run_payload`.
    :param work: iterations the run's payload looped, to describe a timeout.
    """
    if MARKER in run.serial and run.exitcode == OK_STATUS:
        return KvmVerdict(
            True,
            f"payload reached 64-bit mode, ran {4 * work / 1e6:.0f} M instructions and took "
            f"timer interrupts in {run.seconds:.2f} s",
            run.seconds,
        )
    for line, meaning in FAILURES.items():
        if line in run.serial:
            return KvmVerdict(False, f"payload failed: {meaning}", run.seconds)
    reached = [meaning for line, meaning in STAGES if line in run.serial]
    if run.exitcode is None:
        within = f"within {run.timeout:g} s"
        if not reached:
            what = f"payload did not start {within} (firmware or loader did not hand over)"
        elif len(reached) == 1:
            what = f"payload did not reach 64-bit mode {within}"
        elif len(reached) == 2:
            what = (
                f"payload reached 64-bit mode but its loop of {4 * work / 1e6:.0f} M instructions "
                f"did not finish {within}: guest code runs far below native speed"
            )
        elif len(reached) == 3:
            what = f"payload finished its work but no timer interrupt arrived {within}"
        else:
            what = f"payload passed every stage but did not exit {within}"
        detail = _last_error_line(run.stderr, warnings=False)
        tail = f"; QEMU said: {detail}" if detail else ""
        return KvmVerdict(False, what + tail, run.seconds)
    detail = _last_error_line(run.stderr) or (
        "the guest reset (triple fault?)" if run.exitcode == 0 else "no error output"
    )
    last = f" after it {reached[-1]}" if reached else ""
    return KvmVerdict(False, f"QEMU exited with status {run.exitcode}{last}: {detail}", run.seconds)


def dev_kvm_problem(path: str = "/dev/kvm") -> str | None:
    """Why ``/dev/kvm`` cannot be used by this process, or None when it can be opened R/W.

    :param path: the device node (a parameter for tests).
    """
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return f"{path} missing (no KVM module loaded, or virtualization disabled in firmware)"
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"
    if not stat.S_ISCHR(st.st_mode):
        return f"{path} is not a character device"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"no permission on {path} (add yourself to group kvm)"
    return None


def cpu_virt_flag(cpuinfo: str) -> str | None:
    """``vmx`` or ``svm`` when the CPU flags in ``/proc/cpuinfo`` text show one, else None.

    :param cpuinfo: the text of ``/proc/cpuinfo``.
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
            return None
    return None


def kvm_modules(sys_module: str = "/sys/module") -> list[str]:
    """The KVM vendor modules loaded (``kvm_intel``, ``kvm_amd``, ``kvm_pvm``).

    :param sys_module: the sysfs module directory (a parameter for tests).
    """
    return [name for name in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path(sys_module, name).exists()]


def self_test(
    qemu: str,
    cpu: str = KVM_CPU,
    timeout: float = DEFAULT_TIMEOUT,
    device: str = "/dev/kvm",
) -> KvmVerdict:
    """Decide whether KVM is usable: device checks first, then the payload under KVM.

    :param qemu: the QEMU binary.
    :param cpu: the ``-cpu`` model guests will use.
    :param timeout: deadline for the payload run.
    :param device: the KVM device node.
    """
    problem = dev_kvm_problem(device)
    if problem is not None:
        return KvmVerdict(False, problem, 0.0)
    try:
        run = run_payload(qemu, "kvm", cpu=cpu, timeout=timeout)
    except OSError as exc:
        return KvmVerdict(False, f"KVM self-test could not start QEMU: {exc}", 0.0)
    verdict = interpret(run)
    if verdict.usable:
        return verdict
    return KvmVerdict(False, f"KVM self-test failed: {verdict.reason}", verdict.seconds)
