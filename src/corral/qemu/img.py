"""qemu-img operations: each is an argv builder, the runner, and a parser.

Images are untrusted input, so three rules hold for every command run here:

* the format is always named with ``-f`` (qemu-img never guesses one: a guest that writes a
  qcow2 header into its raw disk must not turn that disk into a qcow2 pointing at host files);
* file names are passed so qemu-img cannot read them as options or protocols (``-x``,
  ``json:{...}``, ``nbd:...``): a relative name is written ``./name``;
* qemu-img runs under ``prlimit`` (address space, CPU time, no core dumps) and a wall-clock
  timeout, because a crafted header can make it allocate or loop.

The pieces live in their own modules and are re-exported here:

* :mod:`corral.qemu.img_argv`: the builders (``*_argv``), pure;
* :mod:`corral.qemu.img_parse`: the parsers (:func:`parse_info`, :func:`parse_check`,
  :func:`parse_measure`, :class:`ProgressParser`), pure;
* :mod:`corral.qemu.runner`: :func:`run`, the only function that starts a process.

The operations (:func:`info`, :func:`check`, :func:`create`, :func:`create_overlay`,
:func:`convert`, :func:`resize`, :func:`measure`, :func:`rebase`, :func:`has_own_data`) are
defined here, with the limits each kind
of operation runs under.

Errors: a failed run raises :class:`~corral.errors.ToolError` (the qemu-img argv without the
``prlimit`` prefix, its exit status, its error output); a missing ``qemu-img`` or ``prlimit``
raises :class:`~corral.errors.HostError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from corral.errors import ToolError
from corral.qemu.img_argv import (
    QEMU_IMG,
    ImageFormat,
    PathArg,
    check_argv,
    convert_argv,
    create_argv,
    create_overlay_argv,
    info_argv,
    map_argv,
    measure_argv,
    rebase_argv,
    resize_argv,
    safe_path,
)
from corral.qemu.img_parse import (
    CHECK_CLEAN,
    CHECK_CORRUPT,
    CHECK_FAILED,
    CHECK_LEAKS,
    CHECK_UNSUPPORTED,
    CheckResult,
    ImageInfo,
    Measure,
    ProgressParser,
    VmdkExtent,
    parse_check,
    parse_info,
    parse_measure,
)
from corral.qemu.runner import (
    MAX_STDERR,
    MAX_STDOUT,
    Completed,
    Limits,
    ProgressCallback,
    limited_argv,
    run,
)
from corral.units import GiB

__all__ = [
    "CHANGE_LIMITS",
    "CHECK_CLEAN",
    "CHECK_CORRUPT",
    "CHECK_FAILED",
    "CHECK_LEAKS",
    "CHECK_UNSUPPORTED",
    "CONVERT_LIMITS",
    "INSPECT_LIMITS",
    "MAX_STDERR",
    "MAX_STDOUT",
    "QEMU_IMG",
    "CheckResult",
    "Completed",
    "ImageFormat",
    "ImageInfo",
    "Limits",
    "Measure",
    "PathArg",
    "ProgressCallback",
    "ProgressParser",
    "VmdkExtent",
    "check",
    "check_argv",
    "convert",
    "convert_argv",
    "create",
    "create_argv",
    "create_overlay",
    "create_overlay_argv",
    "has_own_data",
    "info",
    "info_argv",
    "limited_argv",
    "map_argv",
    "measure",
    "measure_argv",
    "parse_check",
    "parse_info",
    "parse_measure",
    "rebase",
    "rebase_argv",
    "resize",
    "resize_argv",
    "run",
    "safe_path",
]

_T = TypeVar("_T")

#: ``info``, ``check``, ``measure``: reading metadata of untrusted images (Nova's numbers).
INSPECT_LIMITS = Limits(address_space=1 * GiB, cpu_seconds=30, timeout=120.0)
#: ``create``, ``resize``: metadata of corral's own images.
CHANGE_LIMITS = Limits(address_space=1 * GiB, cpu_seconds=30, timeout=120.0)
#: ``convert`` copies every allocated byte: CPU time grows with the data, wall time with the disk.
#: The address space covers qemu-img's I/O thread pool (64 threads with 8 MiB stacks).
CONVERT_LIMITS = Limits(address_space=2 * GiB, cpu_seconds=4 * 3600, timeout=None)


def _parsed(argv: Sequence[str], completed: Completed, parse: Callable[[str], _T]) -> _T:
    try:
        return parse(completed.stdout)
    except ValueError as exc:
        raise ToolError(argv, completed.returncode, f"unexpected output: {exc}") from exc


# --- operations: builder + runner + parser --------------------------------------------------


def info(
    path: PathArg,
    fmt: ImageFormat,
    *,
    limits: Limits = INSPECT_LIMITS,
    pass_fds: Sequence[int] = (),
) -> ImageInfo:
    """Describe an image without opening its backing file and without taking locks.

    :param path: the image.
    :param fmt: its format; qemu-img fails if the file is not in it.
    :param limits: resource limits.
    :param pass_fds: descriptors to inherit, when ``path`` is ``/dev/fd/N``.
    :raise ToolError: qemu-img cannot open it as ``fmt``, or printed something unexpected.
    """
    argv = info_argv(path, fmt)
    return _parsed(argv, run(argv, limits, pass_fds=pass_fds), parse_info)


def check(
    path: PathArg,
    fmt: ImageFormat,
    *,
    limits: Limits = INSPECT_LIMITS,
    pass_fds: Sequence[int] = (),
) -> CheckResult:
    """Check an image's metadata for consistency, read-only.

    :param path: the image.
    :param fmt: its format.
    :param limits: resource limits.
    :param pass_fds: descriptors to inherit, when ``path`` is ``/dev/fd/N``.
    :return: the counts; ``supported`` is false for formats without checks.
    :raise ToolError: the check could not be run or completed (exit status 1).
    """
    argv = check_argv(path, fmt)
    ok = (CHECK_CLEAN, CHECK_CORRUPT, CHECK_LEAKS, CHECK_UNSUPPORTED)
    completed = run(argv, limits, ok_codes=ok, pass_fds=pass_fds)
    try:
        return parse_check(completed.returncode, completed.stdout)
    except ValueError as exc:
        raise ToolError(argv, completed.returncode, f"unexpected output: {exc}") from exc


def measure(
    path: PathArg,
    fmt: ImageFormat,
    out_fmt: ImageFormat = "qcow2",
    *,
    limits: Limits = INSPECT_LIMITS,
    pass_fds: Sequence[int] = (),
) -> Measure:
    """How much space converting an image to ``out_fmt`` needs.

    :param path: the image.
    :param fmt: its format.
    :param out_fmt: the target format.
    :param limits: resource limits.
    :param pass_fds: descriptors to inherit, when ``path`` is ``/dev/fd/N``.
    :raise ToolError: qemu-img failed.
    """
    argv = measure_argv(path, fmt, out_fmt)
    return _parsed(argv, run(argv, limits, pass_fds=pass_fds), parse_measure)


def create(
    path: PathArg,
    fmt: ImageFormat,
    size: int | None,
    backing: PathArg | None = None,
    backing_fmt: ImageFormat | None = None,
    *,
    limits: Limits = CHANGE_LIMITS,
) -> None:
    """Create an image (an existing file at ``path`` is overwritten).

    :param path: the new image.
    :param fmt: its format.
    :param size: virtual size in bytes; ``None`` takes the backing file's.
    :param backing: optional backing file, stored as given.
    :param backing_fmt: the backing file's format; required with ``backing``.
    :param limits: resource limits.
    :raise ValueError: inconsistent arguments (see :func:`create_argv`).
    :raise ToolError: qemu-img failed.
    """
    run(create_argv(path, fmt, size, backing, backing_fmt), limits)


def create_overlay(
    path: PathArg,
    base: PathArg,
    base_fmt: ImageFormat = "qcow2",
    size: int | None = None,
    *,
    limits: Limits = CHANGE_LIMITS,
) -> None:
    """Create a qcow2 overlay on ``base``; constant time whatever the base's size.

    :param path: the new overlay (an existing file is overwritten).
    :param base: the backing file, stored as given (pass an absolute name).
    :param base_fmt: its format.
    :param size: virtual size; ``None`` keeps the base's.
    :param limits: resource limits.
    :raise ToolError: qemu-img failed (no base, base not in ``base_fmt``, size too small).
    """
    run(create_overlay_argv(path, base, base_fmt, size), limits)


def convert(
    src: PathArg,
    src_fmt: ImageFormat,
    dst: PathArg,
    dst_fmt: ImageFormat = "qcow2",
    progress: ProgressCallback | None = None,
    *,
    limits: Limits = CONVERT_LIMITS,
    pass_fds: Sequence[int] = (),
) -> None:
    """Convert ``src`` into a new image ``dst`` (overwritten if it exists).

    Writes happen out of order: ``dst`` is only consistent once this returns.

    :param src: the source image.
    :param src_fmt: its format.
    :param dst: the new image.
    :param dst_fmt: its format.
    :param progress: called with each new fraction done (0.0 to 1.0), lastly with 1.0.
    :param limits: resource limits.
    :param pass_fds: descriptors to inherit, when ``src`` is ``/dev/fd/N``.
    :raise ToolError: qemu-img failed or was killed; on interruption the process is killed
        and the exception propagates.
    """
    argv = convert_argv(src, src_fmt, dst, dst_fmt, progress=progress is not None)
    run(argv, limits, progress=progress, pass_fds=pass_fds)


def resize(
    path: PathArg,
    fmt: ImageFormat,
    size: int,
    *,
    limits: Limits = CHANGE_LIMITS,
) -> None:
    """Grow an image to ``size`` bytes (shrinking a qcow2 is refused by qemu-img).

    :param path: the image.
    :param fmt: its format.
    :param size: the new virtual size.
    :param limits: resource limits.
    :raise ToolError: qemu-img failed.
    """
    run(resize_argv(path, fmt, size), limits)


def rebase(
    path: PathArg,
    backing: PathArg | None,
    backing_fmt: ImageFormat = "qcow2",
    *,
    limits: Limits = CONVERT_LIMITS,
) -> None:
    """Change a qcow2 image's backing file, copying in what differs (safe mode).

    :param path: the image.
    :param backing: the new backing file; ``None`` makes it stand alone.
    :param backing_fmt: the new backing file's format.
    :param limits: resource limits (it copies data, as a conversion does).
    :raise ToolError: qemu-img failed.
    """
    run(rebase_argv(path, backing, backing_fmt), limits)


def has_own_data(
    path: PathArg, fmt: ImageFormat = "qcow2", *, limits: Limits = INSPECT_LIMITS
) -> bool:
    """Whether the image itself (not its backing files) holds any data.

    :param path: the image.
    :param fmt: its format.
    :param limits: resource limits.
    :raise ToolError: qemu-img failed or printed something unexpected.
    """
    import json

    argv = map_argv(path, fmt)
    completed = run(argv, limits)
    try:
        extents = json.loads(completed.stdout)
        return any(e.get("depth") == 0 and e.get("data") for e in extents)
    except (ValueError, AttributeError) as exc:
        raise ToolError(argv, completed.returncode, f"unexpected output: {exc}") from exc
