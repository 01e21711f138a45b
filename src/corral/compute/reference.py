"""The reference guest in the catalogue: built from Debian packages, imported as ``reference``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.compute.context import Corral
from corral.config import default_cache
from corral.errors import NotFound

if TYPE_CHECKING:
    from corral.guest.build import ReferenceGuest

REFERENCE = "reference"


def ensure_reference(
    ctx: Corral,
    progress: Callable[[str, float], None] | None = None,
    force: bool = False,
    import_image: bool = True,
) -> tuple[ReferenceGuest, bool]:
    """Build (or take from the cache) the reference guest and import it if missing.

    :return: the guest and whether it was imported now.
    """
    from corral.compute.images import get_image
    from corral.compute.images import import_image as do_import
    from corral.guest.build import build_reference_guest

    guest = build_reference_guest(default_cache(), progress, force=force)
    if not import_image:
        return guest, False
    try:
        get_image(ctx, REFERENCE)
        return guest, False
    except NotFound:
        pass
    do_import(
        ctx,
        REFERENCE,
        guest.rootdisk,
        "qcow2",
        os_hint=f"linux {guest.kernel_version} (busybox)",
        kernel=guest.vmlinux,
        initrd=guest.initrd,
        cmdline=guest.cmdline,
        ready_marker=guest.ready_marker,
        progress=(lambda f: progress("import", f)) if progress else None,
    )
    return guest, True
