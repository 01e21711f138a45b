"""The host report: verdicts from hand-made facts, and one real gathering."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from corral.host.check import (
    DISK_FAIL,
    DISK_WARN,
    Check,
    HostFacts,
    Status,
    evaluate,
    exit_status,
    gather_facts,
    run_checks,
)
from corral.units import GiB

from .conftest import MakeCaps


@pytest.fixture
def healthy(make_caps: MakeCaps) -> HostFacts:
    """A host where everything works."""
    return HostFacts(
        caps=make_caps(),
        kvm_device=True,
        kvm_problem=None,
        virt_flag="vmx",
        kvm_modules=("kvm_intel",),
        tun=True,
        bridge="loaded",
        qemu_img="/usr/bin/qemu-img",
        qemu_img_version="qemu-img version 7.2.22",
        disk_dir="/var/lib/corral",
        disk_free=100 * GiB,
        memory_total=16 * GiB,
        memory_available=12 * GiB,
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def with_(facts: HostFacts, **changes: Any) -> HostFacts:
    return dataclasses.replace(facts, **changes)


def test_a_healthy_host_passes_everything(healthy: HostFacts) -> None:
    checks = evaluate(healthy)
    assert [c for c in checks if c.status is not Status.PASS] == []
    assert exit_status(checks) == 0
    names = [c.name for c in checks]
    assert names == [
        "QEMU",
        "/dev/kvm present",
        "/dev/kvm accessible",
        "CPU virtualization",
        "KVM self-test",
        "TCG",
        "/dev/net/tun",
        "Bridge support",
        "qemu-img",
        "Disk space",
        "Memory",
        "Seccomp sandbox",
        "UEFI firmware (OVMF)",
    ]
    assert by_name(checks)["QEMU"].detail == "/usr/bin/qemu-system-x86_64 7.2.22"


def test_kvm_fallback_warns_with_the_reason(healthy: HostFacts, make_caps: MakeCaps) -> None:
    reason = "KVM self-test failed: payload did not reach 64-bit mode within 3 s"
    facts = with_(healthy, caps=make_caps(accel="tcg", kvm_reason=reason, kvm_test=reason))
    checks = by_name(evaluate(facts))
    assert checks["KVM self-test"] == Check(
        "KVM self-test",
        Status.WARN,
        "falling back to TCG (slow): payload did not reach 64-bit mode within 3 s",
    )
    denied = "no permission on /dev/kvm (add yourself to group kvm)"
    facts = with_(healthy, caps=make_caps(accel="tcg", kvm_reason=denied, kvm_test=""))
    assert by_name(evaluate(facts))["KVM self-test"].detail.endswith(denied)
    assert exit_status(list(checks.values())) == 0  # slow, but works


def test_dev_kvm_missing_or_denied_warns(healthy: HostFacts) -> None:
    missing = by_name(evaluate(with_(healthy, kvm_device=False, kvm_problem="/dev/kvm missing")))
    assert missing["/dev/kvm present"].status is Status.WARN
    assert "/dev/kvm accessible" not in missing
    denied = by_name(evaluate(with_(healthy, kvm_problem="no permission on /dev/kvm")))
    assert denied["/dev/kvm accessible"] == Check(
        "/dev/kvm accessible", Status.WARN, "no permission on /dev/kvm"
    )


def test_cpu_flags_missing_warns_and_names_pvm(healthy: HostFacts) -> None:
    pvm = by_name(evaluate(with_(healthy, virt_flag=None, kvm_modules=("kvm_pvm",))))
    assert pvm["CPU virtualization"].status is Status.WARN
    assert "kvm_pvm" in pvm["CPU virtualization"].detail
    plain = by_name(evaluate(with_(healthy, virt_flag=None, kvm_modules=())))
    assert "disabled in firmware" in plain["CPU virtualization"].detail


def test_forced_kvm_is_a_warning(healthy: HostFacts) -> None:
    checks = by_name(evaluate(with_(healthy, accel_override="kvm")))
    assert checks["KVM self-test"].status is Status.WARN
    assert "forced by CORRAL_ACCEL=kvm" in checks["KVM self-test"].detail


def test_no_accelerator_at_all_fails(healthy: HostFacts, make_caps: MakeCaps) -> None:
    caps = make_caps(accelerators=frozenset({"kvm"}), accel="tcg", kvm_reason="no /dev/kvm")
    checks = evaluate(with_(healthy, caps=caps))
    assert by_name(checks)["TCG"].status is Status.FAIL
    assert exit_status(checks) == 1


def test_no_tcg_is_fine_while_kvm_works(healthy: HostFacts, make_caps: MakeCaps) -> None:
    checks = by_name(evaluate(with_(healthy, caps=make_caps(accelerators=frozenset({"kvm"})))))
    assert checks["TCG"].status is Status.WARN


def test_without_qemu_the_report_still_runs(healthy: HostFacts) -> None:
    error = "qemu-system-x86_64 not found on PATH; install it with: apt-get install qemu-system-x86"
    checks = evaluate(with_(healthy, caps=None, probe_error=error))
    found = by_name(checks)
    assert found["QEMU"] == Check("QEMU", Status.FAIL, error)
    for name in ("KVM self-test", "TCG", "Seccomp sandbox", "UEFI firmware (OVMF)"):
        assert found[name].status is Status.WARN
        assert "not checked" in found[name].detail
    assert exit_status(checks) == 1


@pytest.mark.parametrize(
    ("free", "status"),
    [
        (DISK_FAIL - 1, Status.FAIL),
        (DISK_FAIL, Status.WARN),
        (DISK_WARN - 1, Status.WARN),
        (DISK_WARN, Status.PASS),
    ],
)
def test_disk_thresholds(healthy: HostFacts, free: int, status: Status) -> None:
    assert by_name(evaluate(with_(healthy, disk_free=free)))["Disk space"].status is status


def test_missing_pieces(healthy: HostFacts, make_caps: MakeCaps) -> None:
    facts = with_(
        healthy,
        caps=make_caps(ovmf_code=None, ovmf_vars=None, seccomp=False),
        tun=False,
        bridge=None,
        qemu_img=None,
        qemu_img_version="",
        memory_available=100 << 20,
    )
    checks = by_name(evaluate(facts))
    assert checks["qemu-img"].status is Status.FAIL
    assert "apt-get install qemu-utils" in checks["qemu-img"].detail
    for name in (
        "UEFI firmware (OVMF)",
        "Seccomp sandbox",
        "/dev/net/tun",
        "Bridge support",
        "Memory",
    ):
        assert checks[name].status is Status.WARN, name
    assert "UEFI guests unavailable" in checks["UEFI firmware (OVMF)"].detail


def test_gather_real_facts(make_caps: MakeCaps, tmp_path: Path) -> None:
    facts = gather_facts(make_caps(), tmp_path / "not" / "yet" / "there")
    assert facts.disk_dir == str(tmp_path)  # the nearest existing parent
    assert facts.disk_free is not None
    assert facts.memory_total > 0
    if facts.qemu_img is not None:
        assert "version" in facts.qemu_img_version
    checks = run_checks(make_caps(), tmp_path)
    assert {c.status for c in checks} <= set(Status)
