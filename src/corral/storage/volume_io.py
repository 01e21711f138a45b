"""Volume files in and out of the pool: an untrusted file converted into a volume, and a
volume converted into a copy in another format.

An import runs the catalogue's pipeline (:func:`corral.storage.images.convert_file`): the
file is opened once, its format read from its magic and verified (no backing or data file,
no foreign VMDK extent, no encryption, ``qemu-img check`` clean), converted with both formats
named (``qemu-img convert -f <detected> -O qcow2``) into a temporary file that gets its name
only when complete. An export converts a volume of the pool (a file corral wrote, in the
format its row records) into a new temporary file of the caller's directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from corral.qemu import img
from corral.qemu.runner import ProgressCallback
from corral.storage.formats import ImportFormat
from corral.storage.volumes import VOLUME_MODE, VolumeFormat


@dataclass(frozen=True)
class ImportedVolume:
    """A file converted into the pool."""

    path: Path
    #: The format the source was in (detected from its magic).
    source_format: ImportFormat
    #: Virtual size in bytes.
    size: int


def import_volume_file(
    src: Path,
    dest: Path,
    fmt: str | None = None,
    progress: ProgressCallback | None = None,
) -> ImportedVolume:
    """Verify an untrusted file and convert it into the new qcow2 volume file ``dest``.

    :param src: the user's file.
    :param dest: the volume's file (see :func:`~corral.storage.volumes.volume_path`).
    :param fmt: the format the user says ``src`` is in; ``None`` to detect it.
    :param progress: called with the fraction of the conversion done (0.0 to 1.0).
    :raise InvalidInput: ``fmt`` is not one of the import formats.
    :raise ImageError: the file is refused or unreadable.
    :raise AlreadyExists: ``dest`` exists.
    :raise HostError: not enough free space, or a missing tool.
    :raise ToolError: qemu-img failed writing the new file (nothing is left at ``dest``).
    """
    from corral.storage.images import convert_file

    converted = convert_file(src, dest, "qcow2", fmt, progress)
    try:
        dest.chmod(VOLUME_MODE)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return ImportedVolume(dest, converted.source_format, converted.virtual_size)


def export_volume_file(
    src: Path,
    src_fmt: VolumeFormat,
    directory: Path,
    to: ImportFormat,
    progress: ProgressCallback | None = None,
) -> Path:
    """Convert the volume file ``src`` into a new temporary file of ``directory``.

    :param src_fmt: the volume's format, as its row records it.
    :param to: the copy's format (vmdk: monolithicSparse).
    :return: the new file (mode 0600); the caller removes it.
    :raise ToolError: qemu-img failed (nothing is left behind).
    """
    fd, name = tempfile.mkstemp(prefix=".export-", suffix=f".{to}", dir=directory)
    os.close(fd)
    tmp = Path(name)
    try:
        img.convert(src, src_fmt, tmp, to, progress)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp
