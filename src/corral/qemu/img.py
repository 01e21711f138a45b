"""qemu-img: pure argv builders, parsers of its output, and one runner.

Images are untrusted input, so three rules hold for every command built here:

* the format is always named with ``-f`` (qemu-img never guesses one: a guest that writes a
  qcow2 header into its raw disk must not turn that disk into a qcow2 pointing at host files);
* file names are passed so qemu-img cannot read them as options or protocols (``-x``,
  ``json:{...}``, ``nbd:...``): a relative name is written ``./name``;
* :func:`run` executes qemu-img under ``prlimit`` (address space, CPU time, no core dumps) and a
  wall-clock timeout, because a crafted header can make it allocate or loop.

The builders (``*_argv``) and parsers (:func:`parse_info`, :func:`parse_check`,
:func:`parse_measure`, :class:`ProgressParser`) do no I/O; :func:`run` is the only function
here that starts a process, and the operation functions (:func:`info`, :func:`check`,
:func:`create`, :func:`create_overlay`, :func:`convert`, :func:`resize`, :func:`measure`) are
a builder plus :func:`run` plus a parser.

Errors: a failed run raises :class:`~corral.errors.ToolError` (the qemu-img argv without the
``prlimit`` prefix, its exit status, its error output); a missing ``qemu-img`` or ``prlimit``
raises :class:`~corral.errors.HostError`.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, TypeVar

from corral.errors import HostError, ToolError
from corral.units import GiB

_T = TypeVar("_T")

#: Every image format corral hands to qemu-img.
ImageFormat = Literal["raw", "qcow2", "vmdk", "vdi"]

#: A file name as accepted by the builders.
PathArg = str | os.PathLike[str]

#: Called with the fraction done (0.0 to 1.0) while a conversion runs.
ProgressCallback = Callable[[float], None]

QEMU_IMG = "qemu-img"

#: ``qemu-img check`` exit statuses.
CHECK_CLEAN = 0
CHECK_FAILED = 1
CHECK_CORRUPT = 2
CHECK_LEAKS = 3
CHECK_UNSUPPORTED = 63

#: At most this much standard output is kept (``info`` of a sane image is a few KiB).
MAX_STDOUT = 16 * 1024 * 1024
#: The tail of standard error that is kept for error messages.
MAX_STDERR = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img process.

    :param address_space: ``RLIMIT_AS`` in bytes.
    :param cpu_seconds: ``RLIMIT_CPU`` soft limit in seconds (SIGXCPU); the hard limit is a
        few seconds later (SIGKILL).
    :param timeout: wall-clock seconds before the process is killed; ``None`` waits forever.
    """

    address_space: int
    cpu_seconds: int
    timeout: float | None


#: ``info``, ``check``, ``measure``: reading metadata of untrusted images (Nova's numbers).
INSPECT_LIMITS = Limits(address_space=1 * GiB, cpu_seconds=30, timeout=120.0)
#: ``create``, ``resize``: metadata of corral's own images.
CHANGE_LIMITS = Limits(address_space=1 * GiB, cpu_seconds=30, timeout=120.0)
#: ``convert`` copies every allocated byte: CPU time grows with the data, wall time with the disk.
#: The address space covers qemu-img's I/O thread pool (64 threads with 8 MiB stacks).
CONVERT_LIMITS = Limits(address_space=2 * GiB, cpu_seconds=4 * 3600, timeout=None)

#: glibc reserves up to 64 MiB of address space per malloc arena, up to 8 arenas per CPU;
#: capping the arenas keeps qemu-img's threads inside :attr:`Limits.address_space`.
_CHILD_ENV = {"MALLOC_ARENA_MAX": "2", "LC_ALL": "C"}


# --- argv builders (pure) -------------------------------------------------------------------


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


# --- output parsers (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class VmdkExtent:
    """One extent of a VMDK image: a file that holds part of its data."""

    #: The extent's file (the image itself for monolithicSparse and streamOptimized).
    filename: str
    #: ``FLAT``, ``SPARSE``, ``VMFS``..., or ``""`` for the image's own sparse extent.
    format: str
    virtual_size: int
    compressed: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about an image."""

    filename: str
    format: str
    virtual_size: int
    #: Bytes allocated on the host; qemu-img omits it for some protocols.
    actual_size: int | None = None
    cluster_size: int | None = None
    #: The backing file as written in the image; ``None`` for a standalone image.
    backing_filename: str | None = None
    #: The backing file's format as written in the image.
    backing_format: str | None = None
    #: qcow2: an external data file that holds the guest data.
    data_file: str | None = None
    encrypted: bool = False
    #: qcow2 with lazy refcounts: the image was not closed cleanly.
    dirty: bool = False
    #: qcow2: QEMU marked the image corrupt.
    corrupt: bool = False
    #: vmdk: ``monolithicSparse``, ``streamOptimized``, ``monolithicFlat``...
    vmdk_create_type: str | None = None
    vmdk_extents: tuple[VmdkExtent, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CheckResult:
    """What ``qemu-img check`` found.

    Exit status 2 means corruptions (data may be lost or wrong), 3 means leaked clusters only
    (wasted space, harmless: a conversion drops them), 63 means the format has no checks.
    """

    #: False when the format has no consistency checks (raw).
    supported: bool
    corruptions: int = 0
    leaks: int = 0
    #: Checks that could not be completed.
    check_errors: int = 0
    image_end_offset: int | None = None

    @property
    def clean(self) -> bool:
        """No corruptions and no incomplete checks (leaks are allowed)."""
        return self.corruptions == 0 and self.check_errors == 0


@dataclass(frozen=True)
class Measure:
    """What ``qemu-img measure`` says a conversion needs."""

    #: Bytes the new image needs for the source's allocated data.
    required: int
    #: Bytes it would need fully allocated.
    fully_allocated: int


def _load_object(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} is not an integer: {value!r}")
    return value


def _required_int(data: Mapping[str, object], key: str) -> int:
    value = _int(data, key)
    if value is None:
        raise ValueError(f"no {key!r}")
    return value


def _str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string: {value!r}")
    return value


def _bool(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} is not a boolean: {value!r}")
    return value


def _obj(data: Mapping[str, object], key: str) -> dict[str, object]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} is not an object")
    return value


def parse_info(text: str) -> ImageInfo:
    """Parse ``qemu-img info --output=json`` (one image, no ``--backing-chain``).

    :param text: qemu-img's standard output.
    :raise ValueError: it is not the JSON qemu-img prints.
    """
    data = _load_object(text)
    specific = _obj(data, "format-specific")
    spec_type = _str(specific, "type")
    spec_data = _obj(specific, "data")
    data_file = None
    corrupt = False
    create_type = None
    extents: list[VmdkExtent] = []
    if spec_type == "qcow2":
        data_file = _str(spec_data, "data-file")
        corrupt = _bool(spec_data, "corrupt")
    elif spec_type == "vmdk":
        create_type = _str(spec_data, "create-type")
        raw_extents = spec_data.get("extents", [])
        if not isinstance(raw_extents, list):
            raise ValueError("'extents' is not a list")
        for item in raw_extents:
            if not isinstance(item, dict):
                raise ValueError("an extent is not an object")
            extents.append(
                VmdkExtent(
                    filename=_str(item, "filename") or "",
                    format=_str(item, "format") or "",
                    virtual_size=_int(item, "virtual-size") or 0,
                    compressed=_bool(item, "compressed"),
                )
            )
    return ImageInfo(
        filename=_str(data, "filename") or "",
        format=_str(data, "format") or "",
        virtual_size=_required_int(data, "virtual-size"),
        actual_size=_int(data, "actual-size"),
        cluster_size=_int(data, "cluster-size"),
        backing_filename=_str(data, "backing-filename"),
        backing_format=_str(data, "backing-filename-format"),
        data_file=data_file,
        encrypted=_bool(data, "encrypted"),
        dirty=_bool(data, "dirty-flag"),
        corrupt=corrupt,
        vmdk_create_type=create_type,
        vmdk_extents=tuple(extents),
    )


def parse_check(exitcode: int, text: str) -> CheckResult:
    """Interpret ``qemu-img check --output=json``.

    :param exitcode: its exit status: 0, 2 (corruptions), 3 (leaks) or 63 (no checks).
    :param text: its standard output.
    :raise ValueError: another exit status, or output that is not qemu-img's JSON.
    """
    if exitcode == CHECK_UNSUPPORTED:
        return CheckResult(supported=False)
    if exitcode not in (CHECK_CLEAN, CHECK_CORRUPT, CHECK_LEAKS):
        raise ValueError(f"qemu-img check exited with status {exitcode}")
    data = _load_object(text)
    result = CheckResult(
        supported=True,
        corruptions=_int(data, "corruptions") or 0,
        leaks=_int(data, "leaks") or 0,
        check_errors=_int(data, "check-errors") or 0,
        image_end_offset=_int(data, "image-end-offset"),
    )
    if exitcode == CHECK_CORRUPT and result.corruptions == 0:
        raise ValueError("status 2 (corruptions) but no corruptions counted")
    return result


def parse_measure(text: str) -> Measure:
    """Parse ``qemu-img measure --output=json``.

    :param text: its standard output.
    :raise ValueError: it is not qemu-img's JSON.
    """
    data = _load_object(text)
    return Measure(
        required=_required_int(data, "required"),
        fully_allocated=_required_int(data, "fully-allocated"),
    )


class ProgressParser:
    """Turns the ``(12.34/100%)\\r`` records of ``qemu-img convert -p`` into numbers.

    Feed it the output as it arrives, in chunks of any size; it returns each new percentage
    once, in increasing order.
    """

    _RECORD = re.compile(r"\((\d{1,3}(?:\.\d+)?)/100%\)")
    #: A record is short; anything older than this in the buffer can be dropped.
    _KEEP = 64

    def __init__(self) -> None:
        self._buffer = ""
        #: The last percentage returned, -1 before the first.
        self.last = -1.0

    def feed(self, text: str) -> list[float]:
        """Parse the next chunk of output.

        :param text: output as read, possibly ending inside a record.
        :return: the new percentages it completes, increasing, each within 0..100.
        """
        self._buffer += text
        values: list[float] = []
        end = 0
        for match in self._RECORD.finditer(self._buffer):
            end = match.end()
            value = min(float(match.group(1)), 100.0)
            if value > self.last:
                self.last = value
                values.append(value)
        self._buffer = self._buffer[end:][-self._KEEP :]
        return values


# --- the runner (the only I/O) --------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    """A qemu-img process that exited with an accepted status."""

    argv: tuple[str, ...]
    returncode: int
    #: Standard output (empty when it was fed to a progress parser instead).
    stdout: str
    stderr: str


@cache
def _tools() -> tuple[str, str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise HostError("prlimit (util-linux) not found: corral runs qemu-img under limits")
    qemu_img = shutil.which(QEMU_IMG)
    if qemu_img is None:
        raise HostError("qemu-img not found: install qemu-utils")
    return prlimit, qemu_img


def limited_argv(argv: Sequence[str], limits: Limits, prlimit: str = "prlimit") -> list[str]:
    """``argv`` behind ``prlimit``: address space, CPU time, no core file.

    :param argv: the command.
    :param limits: its limits.
    :param prlimit: the prlimit binary.
    """
    cpu_hard = limits.cpu_seconds + 5
    return [
        prlimit,
        f"--as={limits.address_space}",
        f"--cpu={limits.cpu_seconds}:{cpu_hard}",
        "--core=0",
        "--",
        *argv,
    ]


def _death_note(returncode: int, limits: Limits) -> str:
    if returncode >= 0:
        return ""
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGXCPU:
        return f"killed by {name}: CPU time limit of {limits.cpu_seconds} s exceeded"
    if signum == signal.SIGABRT:
        return f"killed by {name}: it aborted (address space limit {limits.address_space} bytes?)"
    return f"killed by {name}"


class _Output:
    """Collects one process's output: stderr's tail, and stdout kept or fed to a parser."""

    def __init__(
        self, argv: Sequence[str], limits: Limits, progress: ProgressCallback | None
    ) -> None:
        self.argv = argv
        self.limits = limits
        self.progress = progress
        self.parser = ProgressParser()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.out = bytearray()
        self.err = bytearray()

    def timed_out(self) -> ToolError:
        note = f"no result within {self.limits.timeout:g} s: killed"
        return ToolError(self.argv, -signal.SIGKILL, f"{self.stderr}\n{note}")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def take(self, chunk: bytes, is_stderr: bool) -> None:
        if is_stderr:
            self.err += chunk
            del self.err[:-MAX_STDERR]
        elif self.progress is not None:
            for percent in self.parser.feed(self.decoder.decode(chunk)):
                self.progress(percent / 100.0)
        else:
            self.out += chunk
            if len(self.out) > MAX_STDOUT:
                note = f"more than {MAX_STDOUT} bytes of output: killed"
                raise ToolError(self.argv, -signal.SIGKILL, note)

    def pump(self, proc: subprocess.Popen[bytes], deadline: float | None) -> int:
        """Read both pipes until they close, then reap; returns the exit status."""
        assert proc.stdout is not None
        assert proc.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, False)
            selector.register(proc.stderr, selectors.EVENT_READ, True)
            while selector.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self.timed_out()
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self.take(chunk, bool(key.data))
                    else:
                        selector.unregister(key.fileobj)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return proc.wait(remaining)
        except subprocess.TimeoutExpired:
            raise self.timed_out() from None


def run(
    argv: Sequence[str],
    limits: Limits,
    *,
    ok_codes: Collection[int] = (0,),
    progress: ProgressCallback | None = None,
    pass_fds: Sequence[int] = (),
) -> Completed:
    """Run one qemu-img command under ``limits``; the only function here that does I/O.

    The process is killed (and reaped) if it runs past the timeout, prints too much, or the
    caller is interrupted (``KeyboardInterrupt``, an exception from ``progress``).

    :param argv: a command from one of the builders.
    :param limits: resource limits and timeout.
    :param ok_codes: exit statuses that are not failures.
    :param progress: if given, standard output is parsed as ``-p`` records and each new
        fraction done (percentage / 100) is passed to it instead of being kept; 1.0 is
        passed last on success.
    :param pass_fds: file descriptors the process inherits (for ``/dev/fd/N`` names).
    :raise ToolError: another exit status, death by a signal, a timeout or runaway output.
    :raise HostError: qemu-img or prlimit is not installed.
    """
    prlimit, qemu_img = _tools()
    command = [qemu_img, *argv[1:]] if argv and argv[0] == QEMU_IMG else list(argv)
    deadline = None if limits.timeout is None else time.monotonic() + limits.timeout
    output = _Output(argv, limits, progress)
    proc = subprocess.Popen(
        limited_argv(command, limits, prlimit),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        env={**os.environ, **_CHILD_ENV},
    )
    try:
        returncode = output.pump(proc, deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if returncode not in ok_codes:
        note = _death_note(returncode, limits)
        stderr = output.stderr
        raise ToolError(argv, returncode, f"{stderr}\n{note}" if note else stderr)
    if progress is not None and output.parser.last < 100.0:
        progress(1.0)
    return Completed(tuple(argv), returncode, output.out.decode(errors="replace"), output.stderr)


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
