"""The reference guest in the catalogue: built from Debian packages, imported as ``reference``.

The catalogue's ``reference`` remembers the build it was imported from (its key, in the
image's directory). When the recipe changes, a new build replaces it, unless VMs are cloned
from it: their disks need the old base, so it then stays, and the caller is told.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from corral.compute.context import Corral
from corral.config import default_cache
from corral.errors import NotFound

if TYPE_CHECKING:
    from corral.guest.build import ReferenceGuest

REFERENCE = "reference"
#: File in the image's directory that names the build it came from.
_BUILD_KEY = "build-key"


class Catalogued(Enum):
    """What :func:`ensure_reference` did with the catalogue's ``reference``."""

    #: Not imported (``import_image=False``).
    SKIPPED = "skipped"
    #: It was there already, from this build.
    CURRENT = "current"
    #: It was missing and is imported now.
    IMPORTED = "imported"
    #: It came from an older build and was replaced by this one.
    REPLACED = "replaced"
    #: It comes from an older build, but VMs use it: it stays, and this build is not in use.
    STALE_IN_USE = "stale-in-use"


def ensure_reference(
    ctx: Corral,
    progress: Callable[[str, float], None] | None = None,
    force: bool = False,
    import_image: bool = True,
) -> tuple[ReferenceGuest, Catalogued]:
    """Build (or take from the cache) the reference guest and make it the image ``reference``.

    :return: the guest and what happened to the catalogue's ``reference``.
    """
    from corral.compute.images import delete_image, get_image
    from corral.guest.build import build_reference_guest

    guest = build_reference_guest(default_cache(), progress, force=force)
    if not import_image:
        return guest, Catalogued.SKIPPED
    key_file = ctx.home.image_dir(REFERENCE) / _BUILD_KEY
    try:
        image = get_image(ctx, REFERENCE)
    except NotFound:
        _import(ctx, guest, progress)
        return guest, Catalogued.IMPORTED
    try:
        built_from = key_file.read_text().strip()
    except FileNotFoundError:
        built_from = ""
    if built_from == guest.key:
        return guest, Catalogued.CURRENT
    if image.used_by:
        return guest, Catalogued.STALE_IN_USE
    delete_image(ctx, REFERENCE)
    _import(ctx, guest, progress)
    return guest, Catalogued.REPLACED


def _import(
    ctx: Corral, guest: ReferenceGuest, progress: Callable[[str, float], None] | None
) -> None:
    from corral.compute.images import import_image as do_import

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
        ssh_user="root",
        progress=(lambda f: progress("import", f)) if progress else None,
    )
    (ctx.home.image_dir(REFERENCE) / _BUILD_KEY).write_text(guest.key + "\n")
