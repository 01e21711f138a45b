"""Disk images: importing untrusted files into the catalogue, and per-VM disks.

* :mod:`corral.storage.formats` reads formats from a file's first bytes (magic, the qcow2
  header), without I/O of its own.
* :mod:`corral.storage.verify` checks a user's file (magic bytes read by us, then
  ``qemu-img info`` and ``check`` under limits).
* :mod:`corral.storage.images` converts a verified file into a standalone, read-only qcow2
  (or, for ``corral image convert``, into any supported format).
* :mod:`corral.storage.uploads` holds the files sent to corrald (``PUT /images/{name}/file``)
  until they are imported, and sweeps what no one holds any more.
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
from corral.storage.formats import IMPORT_FORMATS, ImportFormat
from corral.storage.images import ConvertedImage, ImportedImage, convert_file, import_image
from corral.storage.verify import VerifiedImage, detect_format, verify_image

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
