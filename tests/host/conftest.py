"""Fixtures for the host tests: the real QEMU binary, hand-made capabilities, a scratch cache."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest

from corral.host.caps import HostCaps, MachineType

MakeCaps = Callable[..., HostCaps]


@pytest.fixture
def qemu_binary() -> str:
    """The real ``qemu-system-x86_64``; the test is skipped without it."""
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        pytest.skip("qemu-system-x86_64 is not installed (qemu-system-x86)")
    return path


@pytest.fixture
def make_caps() -> MakeCaps:
    """Build a :class:`HostCaps` by hand: a healthy KVM host unless fields say otherwise."""

    def make(**over: Any) -> HostCaps:
        base: dict[str, Any] = {
            "qemu_binary": "/usr/bin/qemu-system-x86_64",
            "qemu_version": (7, 2, 22),
            "machines": {
                "pc": MachineType(name="pc", alias="pc-i440fx-7.2", max_cpus=255, is_default=True)
            },
            "devices": frozenset({"virtio-blk-pci", "isa-serial"}),
            "accelerators": frozenset({"kvm", "tcg"}),
            "accel": "kvm",
            "kvm_test": "payload reached 64-bit mode ... in 0.15 s",
            "seccomp": True,
            "ovmf_code": "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "ovmf_vars": "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "host_cpus": 2,
            "host_memory": 8 << 30,
        }
        return HostCaps(**{**base, **over})

    return make
