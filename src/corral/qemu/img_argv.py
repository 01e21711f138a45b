"""qemu-img command lines: pure builders, no I/O.

Images are untrusted input, so every command built here follows two rules:

* the format is always named with ``-f`` (qemu-img never guesses one: a guest that writes a
  qcow2 header into its raw disk must not turn that disk into a qcow2 pointing at host files);
* file names are passed so qemu-img cannot read them as options or protocols (``-x``,
  ``json:{...}``, ``nbd:...``): a relative name is written ``./name``.

The commands start with :data:`QEMU_IMG`; :func:`corral.qemu.runner.run` puts the resolved
binary and its ``prlimit`` limits in front.
"""

from __future__ import annotations

import os
from typing import Literal

#: Every image format corral hands to qemu-img.
ImageFormat = Literal["raw", "qcow2", "vmdk", "vdi"]

#: A file name as accepted by the builders.
PathArg = str | os.PathLike[str]

QEMU_IMG = "qemu-img"


def safe_path(path: PathArg) -> str:
    """A file name qemu-img reads as a plain file: never as an option, protocol or JSON.

    :param path: absolute or relative file name.
    :raise ValueError: the name is empty or contains a NUL byte.
    """
    text = os.fspath(path)
    if not text or "\0" in text:
        raise ValueError(f"not a usable file name: {text!r}")
    if text.startswith("/"):
        return text
    return f"./{text}"


def _size_arg(size: int) -> str:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a whole number of bytes, not {size!r}")
    return str(size)


def info_argv(path: PathArg, fmt: ImageFormat) -> list[str]:
    """``qemu-img info`` as JSON, without taking locks (the image may be in use).

    :param path: the image.
    :param fmt: its format.
    """
    return [QEMU_IMG, "info", "--output=json", "--force-share", "-f", fmt, safe_path(path)]


def check_argv(path: PathArg, fmt: ImageFormat) -> list[str]:
    """``qemu-img check`` as JSON; read-only (never ``-r``).

    :param path: the image.
    :param fmt: its format.
    """
    return [QEMU_IMG, "check", "--output=json", "-f", fmt, safe_path(path)]


def measure_argv(path: PathArg, fmt: ImageFormat, out_fmt: ImageFormat = "qcow2") -> list[str]:
    """``qemu-img measure``: the space a conversion to ``out_fmt`` needs.

    :param path: the image.
    :param fmt: its format.
    :param out_fmt: the format it would be converted to.
    """
    return [QEMU_IMG, "measure", "--output=json", "-f", fmt, "-O", out_fmt, safe_path(path)]


def create_argv(
    path: PathArg,
    fmt: ImageFormat,
    size: int | None,
    backing: PathArg | None = None,
    backing_fmt: ImageFormat | None = None,
) -> list[str]:
    """``qemu-img create``, optionally on top of a backing file.

    :param path: the new image.
    :param fmt: its format.
    :param size: virtual size in bytes; ``None`` takes the backing file's.
    :param backing: backing file, stored in the image as given (relative to the image's
        directory unless absolute).
    :param backing_fmt: the backing file's format; required with ``backing``.
    :raise ValueError: a backing file without its format, no size and no backing file, or a
        size that is not a non-negative integer.
    """
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if backing is not None:
        if backing_fmt is None:
            raise ValueError("a backing file needs its format: qemu-img must not guess it")
        argv += ["-b", safe_path(backing), "-F", backing_fmt]
    elif backing_fmt is not None:
        raise ValueError("backing_fmt given without a backing file")
    argv.append(safe_path(path))
    if size is not None:
        argv.append(_size_arg(size))
    elif backing is None:
        raise ValueError("an image without a backing file needs a size")
    return argv


def create_overlay_argv(
    path: PathArg,
    base: PathArg,
    base_fmt: ImageFormat = "qcow2",
    size: int | None = None,
) -> list[str]:
    """A qcow2 overlay on ``base``: copy-on-write, so its cost does not depend on the base's size.

    :param path: the new overlay.
    :param base: the backing file (pass an absolute name: it is stored as given).
    :param base_fmt: the backing file's format.
    :param size: virtual size; ``None`` keeps the base's.
    """
    return create_argv(path, "qcow2", size, backing=base, backing_fmt=base_fmt)


def convert_argv(
    src: PathArg,
    src_fmt: ImageFormat,
    dst: PathArg,
    dst_fmt: ImageFormat = "qcow2",
    *,
    progress: bool = False,
    out_of_order: bool = True,
) -> list[str]:
    """``qemu-img convert`` into a new file.

    ``-W`` (out-of-order writes) is safe when nothing reads ``dst`` before qemu-img exits, as
    with a temporary name renamed into place afterwards; it lets the copy coroutines run in
    parallel.

    :param src: the source image.
    :param src_fmt: its format.
    :param dst: the file to write.
    :param dst_fmt: its format.
    :param progress: print ``(12.34/100%)`` records on standard output (``-p``).
    :param out_of_order: allow out-of-order writes (``-W``).
    """
    argv = [QEMU_IMG, "convert"]
    if progress:
        argv.append("-p")
    if out_of_order:
        argv.append("-W")
    argv += ["-f", src_fmt, "-O", dst_fmt, safe_path(src), safe_path(dst)]
    return argv


def resize_argv(path: PathArg, fmt: ImageFormat, size: int) -> list[str]:
    """``qemu-img resize`` to an absolute size; never ``--shrink``, so shrinking qcow2 fails.

    :param path: the image.
    :param fmt: its format.
    :param size: the new virtual size in bytes.
    """
    return [QEMU_IMG, "resize", "-q", "-f", fmt, safe_path(path), _size_arg(size)]


def rebase_argv(
    path: PathArg, backing: PathArg | None, backing_fmt: ImageFormat = "qcow2"
) -> list[str]:
    """``qemu-img rebase`` in safe mode: data that differs between the old and the new backing
    is copied into ``path`` first, so what a guest reads is unchanged.

    :param path: the qcow2 image to rebase (its old backing is opened as its header names it,
        with the format its header records).
    :param backing: the new backing file (absolute); ``None`` makes the image stand alone.
    :param backing_fmt: the new backing file's format.
    """
    argv = [QEMU_IMG, "rebase", "-q", "-f", "qcow2"]
    if backing is None:
        argv += ["-b", ""]
    else:
        argv += ["-b", safe_path(backing), "-F", backing_fmt]
    return [*argv, safe_path(path)]


def map_argv(path: PathArg, fmt: ImageFormat) -> list[str]:
    """``qemu-img map`` as JSON: which ranges of the image are allocated in which layer.

    :param path: the image.
    :param fmt: its format.
    """
    return [QEMU_IMG, "map", "--output=json", "--force-share", "-f", fmt, safe_path(path)]
