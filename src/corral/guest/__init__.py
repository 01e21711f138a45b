"""The reference guest: a tiny Linux built from Debian packages, for tests, demos and benchmarks.

:func:`build_reference_guest` builds it (or returns the cached build);
:func:`cached_reference_guest` only looks it up.
"""

from corral.guest.build import (
    HEARTBEAT_PREFIX,
    HOST_KEYS_BEGIN,
    HOST_KEYS_END,
    INITRAMFS_ERROR_PREFIX,
    KERNEL_CMDLINE,
    POWEROFF_MARKER,
    READY_MARKER,
    REBOOT_MARKER,
    SHUTDOWN_MARKER,
    ReferenceGuest,
    build_reference_guest,
    cached_reference_guest,
    recipe_key,
)
from corral.guest.debian import PackagePin

__all__ = [
    "HEARTBEAT_PREFIX",
    "HOST_KEYS_BEGIN",
    "HOST_KEYS_END",
    "INITRAMFS_ERROR_PREFIX",
    "KERNEL_CMDLINE",
    "POWEROFF_MARKER",
    "READY_MARKER",
    "REBOOT_MARKER",
    "SHUTDOWN_MARKER",
    "PackagePin",
    "ReferenceGuest",
    "build_reference_guest",
    "cached_reference_guest",
    "recipe_key",
]
