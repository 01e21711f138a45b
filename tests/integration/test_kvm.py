"""Under KVM (only where its functional self-test passes) guests run accelerated."""

from __future__ import annotations

import pytest

from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.inventory import info
from corral.qemu.monitor import Monitor

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


def test_guest_runs_with_kvm_when_the_self_test_passes(ctx: Corral, vm: str) -> None:
    if ctx.caps.accel != "kvm":
        pytest.skip(f"KVM is not usable here: {ctx.caps.kvm_reason}")
    lifecycle.start(ctx, vm, wait=True)
    with Monitor(str(ctx.home.vm_dir(vm) / "qmp.sock")) as mon:
        kvm = mon.execute("query-kvm")
    assert kvm == {"enabled": True, "present": True}
    assert info(ctx, vm).state == "running"


@pytest.mark.tcg
def test_guest_runs_under_tcg_when_kvm_is_not_usable(ctx: Corral, vm: str) -> None:
    if ctx.caps.accel != "tcg":
        pytest.skip("KVM is usable here")
    assert ctx.caps.kvm_reason
    lifecycle.start(ctx, vm)
    with Monitor(str(ctx.home.vm_dir(vm) / "qmp.sock")) as mon:
        assert mon.execute("query-kvm")["enabled"] is False
