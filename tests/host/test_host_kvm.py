"""The KVM self-test: the verdict logic, the host checks, and the payload run under TCG."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.host import kvm
from corral.host.kvm import KvmVerdict, PayloadRun

# --- Verdicts (pure) --------------------------------------------------------------------------


def _run(serial: bytes, exitcode: int | None, stderr: str = "") -> PayloadRun:
    return PayloadRun(exitcode=exitcode, serial=serial, stderr=stderr, seconds=0.2, timeout=3.0)


ALL_STAGES = b"S1\nS2\nS3\nS4\n"


def test_marker_and_exit_status_pass() -> None:
    verdict = kvm.interpret(_run(ALL_STAGES + kvm.MARKER, kvm.OK_STATUS))
    assert verdict.usable
    assert "64-bit" in verdict.reason
    assert verdict.seconds == 0.2


def test_marker_without_the_exit_status_fails() -> None:
    verdict = kvm.interpret(_run(ALL_STAGES + kvm.MARKER, 0))
    assert not verdict.usable
    assert "status 0" in verdict.reason


def test_exit_status_without_the_marker_fails() -> None:
    assert not kvm.interpret(_run(b"S1\n", kvm.OK_STATUS)).usable


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (b"", "did not start within 3 s"),
        (b"S1\n", "did not reach 64-bit mode within 3 s"),
        (b"S1\nS2\n", "did not finish within 3 s: guest code runs far below native speed"),
        (b"S1\nS2\nS3\n", "no timer interrupt arrived within 3 s"),
    ],
)
def test_timeout_names_the_last_stage(serial: bytes, expected: str) -> None:
    verdict = kvm.interpret(_run(serial, None, "qemu: warning: host doesn't support pni\n"))
    assert not verdict.usable
    assert expected in verdict.reason
    assert "warning" not in verdict.reason  # warnings are noise for a timeout


def test_payload_failure_lines_are_explained() -> None:
    verdict = kvm.interpret(_run(b"S1\nF:NOLM\n", kvm.FAIL_STATUS))
    assert verdict.reason == "payload failed: " + kvm.FAILURES[b"F:NOLM\n"]


def test_qemu_exit_reports_its_last_error_line() -> None:
    stderr = (
        "qemu-system-x86_64: warning: host doesn't support requested feature\n"
        "qemu-system-x86_64: error: failed to set MSR 0x10a\n"
    )
    verdict = kvm.interpret(_run(b"", -6, stderr))
    assert verdict.reason == (
        "QEMU exited with status -6: qemu-system-x86_64: error: failed to set MSR 0x10a"
    )


def test_a_reset_is_named() -> None:
    verdict = kvm.interpret(_run(b"S1\nS2\n", 0))
    assert "reached 64-bit long mode" in verdict.reason
    assert "triple fault" in verdict.reason


# --- Host facts -------------------------------------------------------------------------------


def test_cpu_virt_flag() -> None:
    assert kvm.cpu_virt_flag("processor: 0\nflags\t\t: fpu vme vmx sse\n") == "vmx"
    assert kvm.cpu_virt_flag("flags : fpu svm\n") == "svm"
    assert kvm.cpu_virt_flag("flags : fpu hypervisor\n") is None
    assert kvm.cpu_virt_flag("") is None


def test_dev_kvm_problem(tmp_path: Path) -> None:
    missing = tmp_path / "kvm"
    assert "missing" in (kvm.dev_kvm_problem(str(missing)) or "")
    missing.write_text("")
    assert "not a character device" in (kvm.dev_kvm_problem(str(missing)) or "")
    assert kvm.dev_kvm_problem("/dev/null") is None  # a readable, writable character device


def test_kvm_modules(tmp_path: Path) -> None:
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_amd").mkdir()
    assert kvm.kvm_modules(str(tmp_path)) == ["kvm_amd"]


def test_self_test_stops_at_a_device_problem(tmp_path: Path) -> None:
    verdict = kvm.self_test("/nonexistent/qemu", device=str(tmp_path / "kvm"))
    assert verdict == KvmVerdict(False, verdict.reason, 0.0)
    assert verdict.reason.startswith(f"{tmp_path / 'kvm'} missing")


# --- The payload under real QEMU --------------------------------------------------------------


@pytest.mark.tcg
def test_payload_passes_under_tcg(qemu_binary: str) -> None:
    run = kvm.run_payload(qemu_binary, "tcg", timeout=20)
    assert run.serial == b"S1\nS2\nS3\nS4\n" + kvm.MARKER
    assert run.exitcode == kvm.OK_STATUS
    assert kvm.interpret(run).usable


@pytest.mark.tcg
def test_payload_reports_a_cpu_without_long_mode(qemu_binary: str) -> None:
    run = kvm.run_payload(qemu_binary, "tcg", cpu="qemu32", timeout=20)
    assert run.serial == b"S1\nF:NOLM\n"
    assert run.exitcode == kvm.FAIL_STATUS
    assert "no long mode" in kvm.interpret(run).reason


@pytest.mark.tcg
def test_a_payload_that_overruns_its_deadline_is_killed(qemu_binary: str) -> None:
    # 2**32-1 iterations take far longer than the deadline even natively.
    run = kvm.run_payload(qemu_binary, "tcg", timeout=2, work=(1 << 32) - 1)
    assert run.exitcode is None
    assert run.seconds < 10
    verdict = kvm.interpret(run, work=(1 << 32) - 1)
    assert not verdict.usable
    assert "within 2 s" in verdict.reason


@pytest.mark.tcg
@pytest.mark.slow
def test_self_test_on_this_host_gives_a_reasoned_verdict(qemu_binary: str) -> None:
    verdict = kvm.self_test(qemu_binary)
    assert verdict.seconds < kvm.DEFAULT_TIMEOUT + 5
    if verdict.usable:
        assert "64-bit" in verdict.reason
    else:
        assert verdict.reason
