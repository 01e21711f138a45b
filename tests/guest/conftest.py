"""Fixtures for the reference guest tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from guest_vm import GuestVM, cache_dir, qemu_binary

from corral.guest import ReferenceGuest, build_reference_guest


@pytest.fixture(scope="session")
def reference_guest() -> ReferenceGuest:
    """The reference guest, built (or found) in corral's cache."""
    started = time.monotonic()
    guest = build_reference_guest(cache_dir())
    print(f"\nreference guest {guest.key} ready in {time.monotonic() - started:.2f} s")
    return guest


@pytest.fixture
def boot(reference_guest: ReferenceGuest) -> Iterator[Callable[..., GuestVM]]:
    """Start QEMU on a fresh overlay; every VM started here is killed and removed afterwards."""
    if qemu_binary() is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    vms: list[GuestVM] = []

    def start(**options: object) -> GuestVM:
        vm = GuestVM(reference_guest, **options)  # type: ignore[arg-type]
        vms.append(vm)
        return vm.start()

    yield start
    for vm in vms:
        vm.cleanup()
