"""Disk images: importing untrusted files into the catalogue, and per-VM disks.

* :mod:`corral.storage.images` verifies a user's file (magic bytes read by us, then
  ``qemu-img info`` and ``check`` under limits) and converts it into a standalone,
  read-only qcow2.
* :mod:`corral.storage.disks` makes VM disks: linked clones (qcow2 overlays) of images and
  blank qcow2 disks, and reports their size without running qemu-img.

qemu-img itself is driven by :mod:`corral.qemu.img`.
"""

from corral.storage.disks import (
    DiskUsage,
    create_blank,
    create_clone,
    disk_usage,
    remove_disk,
)
from corral.storage.images import (
    IMPORT_FORMATS,
    ImportedImage,
    ImportFormat,
    VerifiedImage,
    detect_format,
    import_image,
    verify_image,
)

__all__ = [
    "IMPORT_FORMATS",
    "DiskUsage",
    "ImportFormat",
    "ImportedImage",
    "VerifiedImage",
    "create_blank",
    "create_clone",
    "detect_format",
    "disk_usage",
    "import_image",
    "remove_disk",
    "verify_image",
]
