"""Disk images: importing untrusted files into the catalogue, and per-VM disks.

* :mod:`corral.storage.images` verifies a user's file (magic bytes read by us, then
  ``qemu-img info`` and ``check`` under limits) and converts it into a standalone,
  read-only qcow2 (or, for ``corral image convert``, into any supported format).
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
    ConvertedImage,
    ImportedImage,
    ImportFormat,
    VerifiedImage,
    convert_file,
    detect_format,
    import_image,
    verify_image,
)

__all__ = [
    "IMPORT_FORMATS",
    "ConvertedImage",
    "DiskUsage",
    "ImportFormat",
    "ImportedImage",
    "VerifiedImage",
    "convert_file",
    "create_blank",
    "create_clone",
    "detect_format",
    "disk_usage",
    "import_image",
    "remove_disk",
    "verify_image",
]
