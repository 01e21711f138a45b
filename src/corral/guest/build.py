"""Builds the reference guest: a tiny Linux made only of Debian packages, cached by content hash.

The guest is assembled from two Debian packages that are downloaded (``apt-get download``) and
unpacked (``dpkg-deb -x``), never installed: the kernel that ``linux-image-amd64`` depends on and
``busybox-static``. Nothing is mounted, nothing needs root, and the only network use is apt's
own download from the configured Debian archive. The one program from the packages that runs on
the host is the static busybox, as ``busybox --list-full``, to list the applet links to create.

A build writes ``<cache_dir>/guest/<key>/``:

``bzImage``
    Debian's kernel as shipped.
``vmlinux``
    The bzImage's payload, decompressed: the kernel's ELF image (followed by its relocation
    table, which QEMU ignores). It carries the PVH entry note, so QEMU boots it directly
    (``-kernel vmlinux``) without the kernel decompressing itself under emulation, which is
    most of a TCG boot's time (2.3 s to ready instead of 5.5 s here).
``initrd.img``
    An uncompressed newc cpio: busybox, the kernel modules needed to mount a virtio-blk ext4
    root (plus ISO 9660, virtio-net and the ACPI power button) and an ``/init`` that loads them,
    mounts ``root=`` (``/dev/vda``) and switches into it.
``root.qcow2``
    A 512 MiB ext4 root disk with busybox, its init and corral's boot scripts. On each boot the
    guest prints :data:`READY_MARKER` on the serial console, then :data:`HEARTBEAT_PREFIX` and
    its uptime every second; the ACPI power button syncs, remounts ``/`` read-only, prints
    :data:`POWEROFF_MARKER` and powers off. A root shell runs on ``ttyS0``.
``manifest.json``
    What was built from what: key, kernel version, command line, package pins, artefact hashes.
    Written last: a directory without it is not a guest.

The key hashes the recipe (the files in ``recipe/`` and this module's source) and the pinned
package versions. The versions are resolved once and pinned in ``<cache_dir>/guest/packages.json``
with the downloaded ``.deb`` files kept in ``<cache_dir>/guest/debs/``: later builds, including
rebuilds after a recipe change, work offline and give the same kernel; ``force=True`` resolves
the versions again (picking up a new kernel from the archive) and rebuilds. The artefacts are
reproducible: the same key gives byte-identical files.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from corral.errors import GuestBuildError, ToolError

#: Kernel command line for the reference guest.
#:
#: - ``root=`` and ``rw`` are read by the initramfs;
#: - ``quiet`` keeps the serial console (slow under TCG) nearly silent;
#: - ``panic=-1`` turns a kernel panic into an immediate reset, which a supervisor sees (a
#:   RESET event, the panic text in the serial log) instead of a guest spinning forever;
#: - ``cryptomgr.notests`` skips the crypto self-tests (0.35 s of a 2.7 s TCG boot);
#: - ``rodata=off`` skips write-protecting the kernel image and its W+X audit (0.15 s). It
#:   only weakens the guest kernel against exploits from inside this throw-away test guest.
KERNEL_CMDLINE = "console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests rodata=off"
#: Printed alone on a line on the serial console when a boot is complete. Like every marker
#: line it is written with a newline before it, so it never shares a line with an unfinished
#: shell prompt (an empty line may precede it).
READY_MARKER = "corral-ready"
#: Every second: ``corral-heartbeat <guest uptime in seconds>`` alone on a line of the
#: console (written with a newline before it too, so blank lines separate heartbeats).
HEARTBEAT_PREFIX = "corral-heartbeat"
#: Printed when the guest powers off through the ACPI power button (or ``poweroff`` typed in
#: its shell), after the root file system was synced and remounted read-only.
POWEROFF_MARKER = "corral-poweroff"
#: Printed before ``reboot`` typed in the guest's shell resets the machine (same clean-up).
REBOOT_MARKER = "corral-reboot"
#: Printed when init itself shuts down (``busybox reboot``/``poweroff`` run by a program, or
#: Ctrl-Alt-Del), after the same clean-up; init then reboots or powers off about 2 s later.
SHUTDOWN_MARKER = "corral-shutdown"
#: Printed by the initramfs, followed by the reason, when it cannot mount the root; it then
#: powers off.
INITRAMFS_ERROR_PREFIX = "corral-initramfs: error:"

#: Size of the root disk as the guest sees it.
ROOT_DISK_BYTES = 512 * 1024 * 1024
#: The Debian package whose dependency is the kernel image package.
KERNEL_META_PACKAGE = "linux-image-amd64"
#: The Debian package that provides the static busybox.
BUSYBOX_PACKAGE = "busybox-static"

#: Every file time in the built images, for reproducible output (2024-01-01T00:00:00Z).
_EPOCH = 1_704_067_200
#: Layout version of ``manifest.json`` and ``packages.json``.
_FORMAT = 1
_KEY_LENGTH = 16
_GUEST_FILES = ("bzImage", "vmlinux", "initrd.img", "root.qcow2")
_STDERR_TAIL = 2000

#: Recipe file -> (path in the root file system, mode).
_ROOT_FILES: Mapping[str, tuple[str, int]] = {
    "inittab": ("etc/inittab", 0o644),
    "rcS": ("etc/init.d/rcS", 0o755),
    "corral-heartbeat": ("sbin/corral-heartbeat", 0o755),
    "corral-shutdown": ("sbin/corral-shutdown", 0o755),
    "acpi-power-button": ("etc/acpi/PWRF/00000080", 0o755),
    "acpid.conf": ("etc/acpid.conf", 0o644),
    "profile": ("etc/profile", 0o644),
    "hostname": ("etc/hostname", 0o644),
    "hosts": ("etc/hosts", 0o644),
    "passwd": ("etc/passwd", 0o644),
    "group": ("etc/group", 0o644),
    "fstab": ("etc/fstab", 0o644),
}
#: Directories of the root file system, with their modes.
_ROOT_DIRS: Mapping[str, int] = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "etc/init.d": 0o755,
    "etc/acpi": 0o755,
    "etc/acpi/PWRF": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "var": 0o755,
    "var/log": 0o755,
    "mnt": 0o755,
}

ProgressFn = Callable[[str, float], None]

#: Overall progress at the start of each phase (the fraction passed to ``progress``).
_PHASES: Mapping[str, float] = {
    "download": 0.0,
    "kernel": 0.35,
    "initramfs": 0.55,
    "rootfs": 0.7,
    "qcow2": 0.85,
    "done": 1.0,
}


@dataclass(frozen=True)
class ReferenceGuest:
    """A built reference guest: the files QEMU needs to boot it, and how to boot it."""

    #: The cache directory holding the files (``<cache_dir>/guest/<key>``).
    dir: Path
    #: Uncompressed ELF kernel with a PVH entry: ``-kernel`` for a fast boot.
    vmlinux: Path
    #: Debian's compressed kernel as shipped (boots through the Linux boot protocol).
    bzimage: Path
    #: The initramfs (``-initrd``).
    initrd: Path
    #: The root disk (qcow2). Use it read-only as the backing file of an overlay.
    rootdisk: Path
    #: The kernel command line to boot with (``-append``).
    cmdline: str
    #: The line the guest prints on its serial console when it is up.
    ready_marker: str
    #: Content hash of the recipe and the package versions; names :attr:`dir`.
    key: str
    #: ``uname -r`` of the guest's kernel (``6.1.0-41-amd64``).
    kernel_version: str


@dataclass(frozen=True)
class PackagePin:
    """One Debian package the guest is built from, pinned to a version and a file."""

    #: Package name (``linux-image-6.1.0-41-amd64``).
    name: str
    #: Debian version (``6.1.158-1``).
    version: str
    #: The ``.deb`` file name, as kept in ``<cache_dir>/guest/debs/``.
    filename: str
    #: SHA-256 of the ``.deb`` file.
    sha256: str


# --------------------------------------------------------------------------------------------
# Keys and the cache


def _recipe_files() -> list[tuple[str, bytes]]:
    """The recipe as (name, content) pairs, sorted by name."""
    root = resources.files("corral.guest") / "recipe"
    files = [(entry.name, entry.read_bytes()) for entry in root.iterdir() if entry.is_file()]
    return sorted(files)


def _recipe_text(name: str) -> bytes:
    return (resources.files("corral.guest") / "recipe" / name).read_bytes()


def recipe_key(pins: Sequence[PackagePin]) -> str:
    """The content hash that names a build.

    It covers every recipe file, this builder's source and the pinned packages (name,
    version and ``.deb`` hash), so a change to any of them gives a new key.

    :param pins: the packages the guest is built from.
    :return: 16 lower-case hex digits.
    """
    digest = hashlib.sha256()
    digest.update(b"corral reference guest %d\n" % _FORMAT)
    digest.update(hashlib.sha256(Path(__file__).read_bytes()).digest())
    for name, content in _recipe_files():
        digest.update(f"recipe {name} {hashlib.sha256(content).hexdigest()}\n".encode())
    for pin in sorted(pins, key=lambda p: p.name):
        digest.update(f"package {pin.name} {pin.version} {pin.sha256}\n".encode())
    return digest.hexdigest()[:_KEY_LENGTH]


def _read_pins(guest_root: Path) -> list[PackagePin] | None:
    """The pinned packages, or ``None`` if none are pinned (or the file is unreadable)."""
    try:
        data = json.loads((guest_root / "packages.json").read_text())
        if data.get("format") != _FORMAT:
            return None
        return [
            PackagePin(
                name=str(p["name"]),
                version=str(p["version"]),
                filename=str(p["filename"]),
                sha256=str(p["sha256"]),
            )
            for p in data["packages"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_pins(guest_root: Path, pins: Sequence[PackagePin]) -> None:
    """Record the pins (unless they are already recorded, keeping their resolution time)."""
    if _read_pins(guest_root) == list(pins):
        return
    data = {
        "format": _FORMAT,
        "resolved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": [
            {"name": p.name, "version": p.version, "filename": p.filename, "sha256": p.sha256}
            for p in pins
        ],
    }
    _write_atomic(guest_root / "packages.json", json.dumps(data, indent=2).encode() + b"\n")


def _write_atomic(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_guest(directory: Path) -> ReferenceGuest | None:
    """The guest in ``directory`` if it is complete, else ``None``."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("format") != _FORMAT or manifest.get("key") != directory.name:
            return None
        if not all((directory / name).is_file() for name in _GUEST_FILES):
            return None
        return ReferenceGuest(
            dir=directory,
            vmlinux=directory / "vmlinux",
            bzimage=directory / "bzImage",
            initrd=directory / "initrd.img",
            rootdisk=directory / "root.qcow2",
            cmdline=str(manifest["cmdline"]),
            ready_marker=str(manifest["ready_marker"]),
            key=directory.name,
            kernel_version=str(manifest["kernel_version"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_reference_guest(cache_dir: Path) -> ReferenceGuest | None:
    """The reference guest for the current recipe and pinned packages, if it is built.

    Cheap (no subprocess, no network): reads the pins, hashes the recipe, checks the files.

    :param cache_dir: corral's cache directory (the guest lives in its ``guest/``).
    :return: the guest, or ``None`` if it has to be built.
    """
    guest_root = cache_dir / "guest"
    pins = _read_pins(guest_root)
    if pins is None:
        return None
    return _load_guest(guest_root / recipe_key(pins))


@contextlib.contextmanager
def _locked(path: Path, report: ProgressFn) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body."""
    try:
        handle = path.open("a+b")
    except OSError as exc:
        raise GuestBuildError(f"cannot lock the guest cache ({path}): {exc}") from exc
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("waiting", 0.0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_reference_guest(
    cache_dir: Path,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> ReferenceGuest:
    """Build the reference guest, or return the cached one.

    A cached guest is returned without running anything. Otherwise the build runs in a
    temporary directory inside ``<cache_dir>/guest`` and is renamed into place when complete;
    concurrent builders serialise on a lock file and the later ones reuse the first one's
    result. A failed build leaves nothing behind.

    :param cache_dir: corral's cache directory; the guest goes to ``<cache_dir>/guest/<key>``.
    :param progress: called as ``progress(phase, fraction)`` where ``phase`` is one of
        ``download``, ``kernel``, ``initramfs``, ``rootfs``, ``qcow2``, ``done`` (or
        ``waiting`` while another build holds the lock) and ``fraction`` is the overall
        progress from 0 to 1.
    :param force: resolve the package versions again (apt may then pick a newer kernel) and
        rebuild even if a guest with the resulting key exists.
    :return: the built guest.
    :raise GuestBuildError: a step failed; the message names the command and its error output.
    """
    report = progress or _no_progress
    if not force:
        guest = cached_reference_guest(cache_dir)
        if guest is not None:
            report("done", 1.0)
            return guest
    guest_root = cache_dir / "guest"
    try:
        guest_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestBuildError(f"cannot create the guest cache {guest_root}: {exc}") from exc
    with _locked(guest_root / ".lock", report):
        if not force:
            guest = cached_reference_guest(cache_dir)
            if guest is not None:
                report("done", 1.0)
                return guest
        _remove_stale_work_dirs(guest_root)
        guest = _build_locked(guest_root, report, force)
    report("done", 1.0)
    return guest


def _no_progress(phase: str, fraction: float) -> None:
    del phase, fraction


def _remove_stale_work_dirs(guest_root: Path) -> None:
    """Remove what builds killed half-way left (only called while holding the lock)."""
    for entry in guest_root.glob(".build-*"):
        shutil.rmtree(entry, ignore_errors=True)
    for entry in guest_root.glob(".packages.json.*"):
        entry.unlink(missing_ok=True)


def _build_locked(guest_root: Path, report: ProgressFn, force: bool) -> ReferenceGuest:
    work = Path(tempfile.mkdtemp(dir=guest_root, prefix=".build-"))
    try:
        old_pins = None if force else _read_pins(guest_root)
        pins, debs = _obtain_packages(guest_root, old_pins, work, report)
        key = recipe_key(pins)
        target = guest_root / key
        existing = _load_guest(target)
        if existing is not None and not force:
            _write_pins(guest_root, pins)
            return existing
        out = work / key
        out.mkdir()
        _build_into(out, key, pins, debs, work, report)
        _publish(out, target)
        _write_pins(guest_root, pins)
        _prune_debs(guest_root, pins)
        guest = _load_guest(target)
        if guest is None:  # pragma: no cover - _build_into wrote a complete directory
            raise GuestBuildError(f"the built guest in {target} is incomplete")
        return guest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(out: Path, target: Path) -> None:
    """Move the finished build ``out`` to ``target``.

    If ``target`` exists (a forced rebuild) with identical files it is kept as it is, so that
    running VMs and overlays keep using the very same files; otherwise it is replaced.
    """
    if target.exists():
        if _load_guest(target) is not None and _manifest_files(target) == _manifest_files(out):
            return
        trash = out.parent / "replaced"
        target.rename(trash)
    out.rename(target)


def _manifest_files(directory: Path) -> object:
    try:
        return json.loads((directory / "manifest.json").read_text()).get("files")
    except (OSError, ValueError):
        return None


def _prune_debs(guest_root: Path, pins: Sequence[PackagePin]) -> None:
    keep = {pin.filename for pin in pins}
    for deb in (guest_root / "debs").glob("*.deb"):
        if deb.name not in keep:
            deb.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Running tools


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int | BinaryIO | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; raise :class:`GuestBuildError` (caused by a :class:`ToolError`) on failure."""
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    full_env.update({"LC_ALL": "C", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"})
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=full_env, stdout=stdout, stderr=subprocess.PIPE, check=False
        )
    except FileNotFoundError as exc:
        raise GuestBuildError(
            f"{args[0]} is not installed: building the reference guest needs apt-get, "
            "dpkg-deb, mkfs.ext4, debugfs (e2fsprogs) and qemu-img (qemu-utils)"
        ) from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        tail = stderr.strip()[-_STDERR_TAIL:] or "no error output"
        raise GuestBuildError(
            f"command failed with status {proc.returncode}: {_quote(args)}\n{tail}"
        ) from ToolError(args, proc.returncode, stderr)
    return proc


def _quote(args: Sequence[str]) -> str:
    return " ".join(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else repr(a) for a in args)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Packages


def _obtain_packages(
    guest_root: Path,
    pins: Sequence[PackagePin] | None,
    work: Path,
    report: ProgressFn,
) -> tuple[list[PackagePin], dict[str, Path]]:
    """The pinned packages and their ``.deb`` files (in ``<guest_root>/debs``).

    With pins whose files are present, nothing is downloaded. With pins whose files are
    missing, those exact versions are downloaded. Without pins, the versions are resolved
    (the current kernel of ``linux-image-amd64`` and ``busybox-static``) and downloaded.
    """
    report("download", _PHASES["download"])
    debs_dir = guest_root / "debs"
    debs_dir.mkdir(exist_ok=True)
    if pins is not None:
        present = {
            pin.name: debs_dir / pin.filename
            for pin in pins
            if (debs_dir / pin.filename).is_file()
            and _sha256_file(debs_dir / pin.filename) == pin.sha256
        }
        if len(present) == len(pins):
            return list(pins), present
        missing = [pin for pin in pins if pin.name not in present]
        fetched = _apt_download(work, [f"{p.name}={p.version}" for p in missing])
        for pin in missing:
            deb = fetched.get(pin.name)
            if deb is None or _sha256_file(deb) != pin.sha256:
                raise GuestBuildError(
                    f"the pinned package {pin.name} {pin.version} could not be fetched again "
                    "unchanged; rebuild with force to resolve the package versions anew"
                )
            present[pin.name] = _keep_deb(deb, debs_dir)
        return list(pins), present

    meta = _apt_download(work, [KERNEL_META_PACKAGE])[KERNEL_META_PACKAGE]
    kernel_package = _kernel_dependency(meta)
    report("download", _PHASES["download"] + 0.02)
    fetched = _apt_download(work, [kernel_package, BUSYBOX_PACKAGE])
    new_pins: list[PackagePin] = []
    kept: dict[str, Path] = {}
    for name in (kernel_package.split("=")[0], BUSYBOX_PACKAGE):
        deb = fetched[name]
        fields = _deb_fields(deb, "Version")
        new_pins.append(
            PackagePin(
                name=name, version=fields["Version"], filename=deb.name, sha256=_sha256_file(deb)
            )
        )
        kept[name] = _keep_deb(deb, debs_dir)
    return new_pins, kept


def _keep_deb(deb: Path, debs_dir: Path) -> Path:
    target = debs_dir / deb.name
    deb.replace(target)
    return target


def _apt_download(work: Path, specs: Sequence[str]) -> dict[str, Path]:
    """``apt-get download`` the packages into a fresh directory; map package name -> file."""
    target = Path(tempfile.mkdtemp(dir=work, prefix="apt-"))
    try:
        _run(["apt-get", "download", "-q", *specs], cwd=target)
    except GuestBuildError as exc:
        raise GuestBuildError(
            f"cannot download {', '.join(specs)} from the Debian archive (is the apt package "
            f"list current? `apt-get update` refreshes it): {exc}"
        ) from exc
    found: dict[str, Path] = {}
    for deb in sorted(target.glob("*.deb")):
        found[_deb_fields(deb, "Package")["Package"]] = deb
    wanted = {spec.split("=")[0] for spec in specs}
    if not wanted <= found.keys():
        raise GuestBuildError(
            f"apt-get download {' '.join(specs)} did not deliver {sorted(wanted - found.keys())}"
        )
    return found


def _deb_fields(deb: Path, *names: str) -> dict[str, str]:
    """Control fields of a ``.deb``."""
    out = _run(["dpkg-deb", "--field", deb, *names]).stdout.decode()
    if len(names) == 1:
        return {names[0]: out.strip()}
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _kernel_dependency(meta_deb: Path) -> str:
    """The kernel image package (``name=version``) that the meta package depends on."""
    return kernel_package_from_depends(_deb_fields(meta_deb, "Depends")["Depends"])


def kernel_package_from_depends(depends: str) -> str:
    """The kernel image package named in a ``Depends:`` field, as an apt download spec.

    :param depends: e.g. ``linux-image-6.1.0-41-amd64 (= 6.1.158-1)``.
    :return: ``name=version`` (or ``name`` if the dependency has no exact version).
    :raise GuestBuildError: no ``linux-image-<version>`` package in the field.
    """
    for alternative in re.split(r"[,|]", depends):
        match = re.fullmatch(
            r"\s*(linux-image-[0-9][\w.+-]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*", alternative
        )
        if match:
            name, version = match.groups()
            return f"{name}={version}" if version else name
    raise GuestBuildError(
        f"{KERNEL_META_PACKAGE} does not depend on a kernel image package (Depends: {depends})"
    )


# --------------------------------------------------------------------------------------------
# The build


def _build_into(
    out: Path,
    key: str,
    pins: Sequence[PackagePin],
    debs: Mapping[str, Path],
    work: Path,
    report: ProgressFn,
) -> None:
    """Build every artefact of the guest into ``out`` (``manifest.json`` last)."""
    kernel_pin = next(p for p in pins if p.name != BUSYBOX_PACKAGE)

    report("kernel", _PHASES["kernel"])
    kernel_tree = work / "kernel-deb"
    _run(["dpkg-deb", "-x", debs[kernel_pin.name], kernel_tree])
    kernel_version = _kernel_version(kernel_tree)
    shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{kernel_version}", out / "bzImage")
    vmlinux = extract_vmlinux((out / "bzImage").read_bytes())
    if pvh_entry(vmlinux) is None:
        raise GuestBuildError(
            f"the vmlinux of {kernel_pin.name} {kernel_pin.version} has no PVH entry note "
            "(XEN_ELFNOTE_PHYS32_ENTRY): QEMU cannot boot it directly"
        )
    (out / "vmlinux").write_bytes(vmlinux)
    del vmlinux

    report("initramfs", _PHASES["initramfs"])
    busybox_tree = work / "busybox-deb"
    _run(["dpkg-deb", "-x", debs[BUSYBOX_PACKAGE], busybox_tree])
    busybox = busybox_tree / "bin" / "busybox"
    if not busybox.is_file():
        raise GuestBuildError(f"{BUSYBOX_PACKAGE} has no /bin/busybox")
    modules_dir = kernel_tree / "lib" / "modules" / kernel_version
    wanted = parse_module_list(_recipe_text("modules").decode())
    order = resolve_modules(wanted, ModuleTree(modules_dir))
    _write_initramfs(out / "initrd.img", busybox, order)
    shutil.rmtree(kernel_tree)

    report("rootfs", _PHASES["rootfs"])
    raw = work / "root.raw"
    _make_rootfs(raw, key, busybox, work / "rootfs")

    report("qcow2", _PHASES["qcow2"])
    _run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            raw,
            out / "root.qcow2",
        ]
    )
    raw.unlink()

    manifest = {
        "format": _FORMAT,
        "key": key,
        "kernel_version": kernel_version,
        "cmdline": KERNEL_CMDLINE,
        "ready_marker": READY_MARKER,
        "modules": [name for name, _ in order],
        "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in pins],
        "files": {name: _sha256_file(out / name) for name in _GUEST_FILES},
    }
    _write_atomic(out / "manifest.json", json.dumps(manifest, indent=2).encode() + b"\n")


def _kernel_version(tree: Path) -> str:
    versions = sorted(p.name for p in (tree / "lib" / "modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise GuestBuildError(f"expected one kernel in the package, found {versions}")
    version = versions[0]
    if not (tree / "boot" / f"vmlinuz-{version}").is_file():
        raise GuestBuildError(f"the kernel package has no /boot/vmlinuz-{version}")
    return version


# --------------------------------------------------------------------------------------------
# Kernel: bzImage -> vmlinux

_BZ_SETUP_SECTS = 0x1F1
_BZ_MAGIC = 0x202
_BZ_VERSION = 0x206
#: payload_offset, then payload_length (both u32).
_BZ_PAYLOAD_OFFSET = 0x248
#: Boot protocol 2.08 added payload_offset/payload_length.
_BZ_MIN_VERSION = 0x0208

_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage.

    The payload is found through the setup header (boot protocol 2.08 or later) and
    decompressed in-process (xz, lzma, gzip or bzip2).

    :param bzimage: the bzImage file's content.
    :return: the vmlinux ELF image.
    :raise GuestBuildError: not a bzImage, an unsupported compression, or not an ELF inside.
    """
    if len(bzimage) < 0x300 or bzimage[_BZ_MAGIC : _BZ_MAGIC + 4] != b"HdrS":
        raise GuestBuildError("the kernel is not a bzImage (no HdrS setup header)")
    (version,) = struct.unpack_from("<H", bzimage, _BZ_VERSION)
    if version < _BZ_MIN_VERSION:
        raise GuestBuildError(f"the bzImage's boot protocol {version:#x} is older than 2.08")
    setup_sects = bzimage[_BZ_SETUP_SECTS] or 4
    offset, length = struct.unpack_from("<II", bzimage, _BZ_PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    if len(payload) != length or length == 0:
        raise GuestBuildError("the bzImage's payload lies outside the file")
    vmlinux = _decompress(payload)
    if vmlinux[:4] != b"\x7fELF":
        raise GuestBuildError("the bzImage's payload is not an ELF image")
    return vmlinux


def _decompress(payload: bytes) -> bytes:
    """Decompress a kernel payload; trailing bytes (the appended size) are ignored."""
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if payload.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        if payload.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload)
        if payload.startswith(b"BZh"):
            return bz2.BZ2Decompressor().decompress(payload)
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise GuestBuildError(f"cannot decompress the bzImage's payload: {exc}") from exc
    raise GuestBuildError(
        f"the bzImage's payload uses an unsupported compression (magic {payload[:6].hex()})"
    )


def elf_notes(elf: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """The notes of a 64-bit little-endian ELF image's PT_NOTE segments.

    :param elf: the ELF file's content.
    :return: (name without the NUL, type, descriptor) for each note.
    :raise GuestBuildError: not a 64-bit little-endian ELF.
    """
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise GuestBuildError("not a 64-bit little-endian ELF image")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + index * phentsize
        )
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name_at = pos + 12
            desc_at = name_at + _align4(namesz)
            name = elf[name_at : name_at + namesz].rstrip(b"\x00")
            yield name, note_type, elf[desc_at : desc_at + descsz]
            pos = desc_at + _align4(descsz)


def _align4(value: int) -> int:
    return (value + 3) & ~3


def pvh_entry(elf: bytes) -> int | None:
    """The 32-bit PVH entry point of a kernel (its XEN_ELFNOTE_PHYS32_ENTRY note), if any.

    :param elf: the vmlinux ELF image.
    :return: the physical entry address, or ``None`` without the note.
    :raise GuestBuildError: not a 64-bit little-endian ELF.
    """
    for name, note_type, desc in elf_notes(elf):
        if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            return int.from_bytes(desc[:8] if len(desc) >= 8 else desc[:4], "little")
    return None


# --------------------------------------------------------------------------------------------
# Kernel modules


def module_name(path_or_name: str) -> str:
    """The canonical name of a module: file name without ``.ko``, dashes as underscores."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a kernel module: each key with its values.

    :param ko: the module file's content (uncompressed ELF).
    :return: e.g. ``{"name": ["ext4"], "depends": ["mbcache,jbd2,crc16"], ...}``.
    :raise GuestBuildError: not a 64-bit ELF, or no ``.modinfo`` section.
    """
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise GuestBuildError("kernel module is not a 64-bit little-endian ELF")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", ko, shoff + index * shentsize
        )
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = ko[str_off : str_off + str_size]
    for index in range(shnum):
        name_at, offset, size = section(index)
        if names[name_at : names.index(b"\x00", name_at)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for entry in ko[offset : offset + size].split(b"\x00"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise GuestBuildError("kernel module has no .modinfo section")


class ModuleTree:
    """The modules of one kernel as unpacked from its package (``lib/modules/<version>``).

    :param root: the ``lib/modules/<version>`` directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[str, Path] = {}
        for path in sorted((root / "kernel").rglob("*.ko*")):
            self._paths.setdefault(module_name(path.name), path)
        builtin = root / "modules.builtin"
        lines = builtin.read_text().split() if builtin.is_file() else []
        self._builtin = {module_name(line) for line in lines}

    def is_builtin(self, name: str) -> bool:
        """Whether the kernel has the module built in."""
        return name in self._builtin

    def path(self, name: str) -> Path | None:
        """The module's file, if it is a loadable module."""
        return self._paths.get(name)

    def content(self, name: str) -> bytes:
        """The module's uncompressed ELF content.

        :raise GuestBuildError: no such module, or a compression Python cannot read.
        """
        path = self.path(name)
        if path is None:
            raise GuestBuildError(f"kernel module {name} is not in the kernel package")
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if path.name.endswith(".ko.gz"):
            return zlib.decompress(data, wbits=16 + zlib.MAX_WBITS)
        if path.name.endswith(".ko"):
            return data
        raise GuestBuildError(f"kernel module {path.name} uses an unsupported compression")


def parse_module_list(text: str) -> list[str]:
    """Module names from the recipe's ``modules`` file (``#`` starts a comment).

    :param text: the file's content.
    :return: canonical module names, in order.
    """
    names = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            names.append(module_name(entry))
    return names


def resolve_modules(wanted: Iterable[str], tree: ModuleTree) -> list[tuple[str, bytes]]:
    """The modules to load for ``wanted``, dependencies first, each once, with their content.

    Built-in modules are skipped. The order follows ``wanted``, each module preceded by the
    modules it depends on (depth first).

    :param wanted: canonical module names.
    :param tree: the kernel's modules.
    :return: (name, uncompressed ``.ko`` content) in load order.
    :raise GuestBuildError: a module is neither built in nor in the package, or the
        dependencies form a cycle.
    """
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done or tree.is_builtin(name):
            return
        if name in visiting:
            raise GuestBuildError(
                f"kernel module dependency cycle: {' -> '.join([*visiting, name])}"
            )
        if tree.path(name) is None:
            raise GuestBuildError(
                f"kernel module {name} is neither built into the kernel nor in its package"
            )
        visiting.append(name)
        content = tree.content(name)
        info = modinfo(content)
        for value in info.get("depends", []):
            for dep in value.split(","):
                if dep.strip():
                    visit(module_name(dep.strip()))
        visiting.pop()
        done.add(name)
        order.append((name, content))

    for name in wanted:
        visit(name)
    return order


# --------------------------------------------------------------------------------------------
# Initramfs: a newc cpio written here, so device nodes need no root


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive."""

    #: Path inside the archive, without a leading ``/``.
    name: str
    #: Full ``st_mode`` (file type and permissions).
    mode: int
    #: File content, or the target of a symbolic link.
    data: bytes = b""
    #: Device number of a character or block device node.
    rdev: tuple[int, int] = (0, 0)


def write_newc(entries: Iterable[CpioEntry], out: BinaryIO, mtime: int = _EPOCH) -> None:
    """Write a newc (``070701``) cpio archive, owned by root, with a fixed time.

    :param entries: the members, parents before children.
    :param out: where to write.
    :param mtime: the time stamp of every member.
    """
    written = 0

    def put(data: bytes) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    def pad() -> None:
        put(b"\x00" * (-written % 4))

    members = [*entries, CpioEntry(name="TRAILER!!!", mode=0)]
    for ino, entry in enumerate(members, start=1):
        name = entry.name.encode() + b"\x00"
        is_dir = (entry.mode & 0o170000) == 0o040000
        fields = (
            ino if entry.name != "TRAILER!!!" else 0,
            entry.mode,
            0,
            0,
            2 if is_dir else 1,
            mtime if entry.name != "TRAILER!!!" else 0,
            len(entry.data),
            0,
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,
        )
        put(b"070701" + b"".join(b"%08X" % f for f in fields))
        put(name)
        pad()
        put(entry.data)
        pad()


def _write_initramfs(path: Path, busybox: Path, modules: Sequence[tuple[str, bytes]]) -> None:
    entries = [
        CpioEntry("bin", 0o040755),
        CpioEntry("bin/busybox", 0o100755, busybox.read_bytes()),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("dev", 0o040755),
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("init", 0o100755, _recipe_text("init")),
        CpioEntry("lib", 0o040755),
        CpioEntry("lib/modules", 0o040755),
        *(CpioEntry(f"lib/modules/{name}.ko", 0o100644, content) for name, content in modules),
        CpioEntry("modules.load", 0o100644, "".join(f"{n}\n" for n, _ in modules).encode()),
        CpioEntry("newroot", 0o040755),
        CpioEntry("proc", 0o040755),
        CpioEntry("sys", 0o040755),
    ]
    with path.open("wb") as handle:
        write_newc(entries, handle)


# --------------------------------------------------------------------------------------------
# Root file system: staged in a directory, written by mkfs.ext4 -d, never mounted


def _busybox_applets(busybox: Path) -> list[str]:
    """The applet paths busybox installs (``bin/ls``, ``sbin/init``, ...)."""
    out = _run([busybox, "--list-full"]).stdout.decode()
    applets = []
    for line in out.split():
        if line == "linuxrc":  # the initrd-era init name; the guest boots /sbin/init
            continue
        if not re.fullmatch(r"(usr/)?s?bin/[\w.\[\]-]+", line):
            raise GuestBuildError(f"busybox --list-full printed an unexpected path {line!r}")
        applets.append(line)
    if "sbin/init" not in applets:
        raise GuestBuildError("busybox has no init applet")
    return applets


def _make_rootfs(raw: Path, key: str, busybox: Path, staging: Path) -> None:
    """Stage the root file system and write it as an ext4 image into the sparse file ``raw``."""
    staging.mkdir()
    staging.chmod(0o755)
    for directory in _ROOT_DIRS:
        (staging / directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, staging / "bin" / "busybox")
    (staging / "bin" / "busybox").chmod(0o755)
    for applet in _busybox_applets(busybox):
        link = staging / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    for recipe_name, (dest, mode) in _ROOT_FILES.items():
        target = staging / dest
        target.write_bytes(_recipe_text(recipe_name))
        target.chmod(mode)
    for directory, mode in _ROOT_DIRS.items():
        (staging / directory).chmod(mode)

    fs_uuid = str(uuid.UUID(hashlib.sha256(f"corral-root {key}".encode()).hexdigest()[:32]))
    with raw.open("wb") as handle:
        handle.truncate(ROOT_DISK_BYTES)
    fake_time = {"E2FSPROGS_FAKE_TIME": str(_EPOCH)}
    _run(
        [
            "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "corral-root", "-U", fs_uuid,
            "-E", f"hash_seed={fs_uuid},lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
            "-d", staging, raw,
        ],
        env=fake_time,
    )  # fmt: skip
    # mkfs.ext4 -d copies owners and times from the staging files; make them root's and fixed.
    commands = []
    for path in sorted(staging.rglob("*")):
        inode = "/" + path.relative_to(staging).as_posix()
        if not re.fullmatch(r"[\w/.\[\]-]+", inode):
            raise GuestBuildError(f"unexpected file name in the root file system: {inode!r}")
        for field in ("uid 0", "gid 0"):
            commands.append(f"sif {inode} {field}\n")
        for field in ("atime", "mtime", "ctime", "crtime"):
            commands.append(f"sif {inode} {field} @{_EPOCH}\n")
    script = raw.parent / "debugfs.cmds"
    script.write_text("".join(commands))
    proc = _run(["debugfs", "-w", "-f", script, raw], env=fake_time)
    errors = [
        line
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if errors:
        raise GuestBuildError(f"debugfs could not fix up the root file system: {errors[0]}")
