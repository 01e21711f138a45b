"""Builds the reference guest: a tiny Linux made only of Debian packages, cached by content hash.

The guest is assembled from Debian packages that are downloaded (``apt-get download``) and
unpacked (``dpkg-deb -x``), never installed: the kernel that ``linux-image-amd64`` depends on,
``busybox-static``, the SSH server ``dropbear-bin``, OpenSSH's SFTP server and ``resize2fs``
with the packages of the shared libraries they load
(:data:`~corral.guest.debian.PROGRAM_PACKAGES`). Of those, only
:data:`PROGRAMS` and the libraries their ``DT_NEEDED`` entries name (read by
:mod:`~corral.guest.elf`, followed by :mod:`~corral.guest.programs`, which fails the build if
one is missing) are copied, with the dynamic loader. Nothing is mounted, nothing needs root,
and the only network use is apt's own download from the configured Debian archive. The one
program from the packages that runs on the host is the static busybox, as
``busybox --list-full``, to list the applet links to create.

A build writes ``<cache_dir>/guest/<key>/``:

``bzImage``
    Debian's kernel as shipped.
``vmlinux``
    The bzImage's payload, decompressed: the kernel's ELF image (followed by its relocation
    table, which QEMU ignores). It carries the PVH entry note, so QEMU boots it directly
    (``-kernel vmlinux``) without the kernel decompressing itself under emulation, which is
    most of a TCG boot's time (2.3 s to ready instead of 5.5 s here).
``initrd.img``
    An uncompressed newc cpio: busybox, the kernel modules the guest needs to be ready (those
    that mount a virtio-blk ext4 root, read an ISO 9660 seed, drive a virtio NIC, and the
    ACPI power button: ``recipe/modules``) and an ``/init`` that loads them, mounts ``root=``
    (``/dev/vda``) and switches into it.
``root.qcow2``
    A 512 MiB ext4 root disk with busybox, its init, corral's boot scripts, dropbear and its
    libraries, and the kernel modules in ``/lib/modules/<version>`` (with a ``modules.dep``:
    busybox ``modprobe`` works). It holds no SSH host key. On each boot (``recipe/rcS``):

    - dropbear starts in the background, public-key logins only, root with
      ``/root/.ssh/authorized_keys``; at the first boot it first makes an ed25519 host key
      (``dropbearkey``), kept on the disk, so each VM (each overlay) gets its own;
    - ``recipe/corral-nocloud`` reads the NoCloud seed, the file system labelled ``cidata``
      (cloud-init's NoCloud data source; ``recipe/nocloud.awk`` parses its YAML and says
      which subset is supported): ``meta-data`` (``instance-id``, ``local-hostname``,
      ``public-keys``), a ``#cloud-config`` user-data (``hostname``,
      ``ssh_authorized_keys``, ``runcmd``, ``write_files``) or a ``#!`` script, and a
      version 2 ``network-config`` (ethernets matched by MAC or name, ``set-name``,
      ``dhcp4`` through busybox ``udhcpc``, static IPv4 addresses). Keys, ``write_files``,
      ``runcmd`` and the script act once per instance-id (``/var/lib/cloud/instance-id``);
      without a seed the host name comes from ``/etc/hostname`` and eth0, if any, asks DHCP;
    - once dropbear listens on port 22 (its socket in ``/proc/net/tcp``), the host key is
      printed between :data:`HOST_KEYS_BEGIN` and :data:`HOST_KEYS_END` as cloud-init does,
      then :data:`READY_MARKER`; the ACPI power button works by then too. After it come
      ``runcmd`` and the user-data script (``corral-nocloud: runcmd finished, exit status
      N``), the modules of ``recipe/modules-after-ready`` (none at the moment), and
      :data:`HEARTBEAT_PREFIX` with the uptime every second. The ACPI power button syncs,
      remounts ``/`` read-only, prints :data:`POWEROFF_MARKER` and powers off. A root
      shell runs on ``ttyS0``.

    The host key and dropbear wait for the kernel's random number generator: a CPU with
    RDRAND (``-cpu qemu64,+rdrand`` under TCG) has it ready at once; without it, it takes
    about a second from the initramfs on.
``manifest.json``
    What was built from what: key, kernel version, command line, package pins, the SSH
    server's files, artefact hashes. Written last: a directory without it is not a guest.

Every kernel module is shipped as :func:`~corral.guest.initramfs.prepare_module` makes it:
without its signature, its ftrace call sites hidden; both only spare the guest's kernel work
when it loads the module. Boot time under TCG is the guest's main cost, so
:data:`KERNEL_CMDLINE`, the initramfs and the boot scripts are cut to what readiness needs.

The key hashes the recipe (the files in ``recipe/``), the source of every builder module (this
one and the modules of its steps: :mod:`~corral.guest.debian`, :mod:`~corral.guest.elf`,
:mod:`~corral.guest.kernel`, :mod:`~corral.guest.initramfs`, :mod:`~corral.guest.programs`,
:mod:`~corral.guest.rootfs` and :mod:`~corral.guest.tools`), so that a change in any of them
rebuilds, and the pinned package versions. The versions are resolved once and pinned in
``<cache_dir>/guest/packages.json`` with the downloaded ``.deb`` files kept in
``<cache_dir>/guest/debs/``: later builds, including rebuilds after a recipe change, work
offline and give the same kernel (a package the recipe adds is resolved and pinned then,
the others stay as pinned); ``force=True`` resolves the versions again (picking up a new
kernel from the archive) and rebuilds. The artefacts are reproducible: the same key gives
byte-identical files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corral.errors import GuestBuildError
from corral.guest.debian import (
    BUSYBOX_PACKAGE,
    PROGRAM_PACKAGES,
    PackagePin,
    is_kernel_package,
    kernel_version,
    obtain_packages,
    prune_debs,
    read_pins,
    unpack,
    write_pins,
)
from corral.guest.initramfs import (
    ModuleTree,
    module_directory,
    parse_module_list,
    prepare_module,
    resolve_modules,
    write_initramfs,
)
from corral.guest.kernel import extract_vmlinux, pvh_entry
from corral.guest.programs import program_files
from corral.guest.rootfs import RootFile, make_rootfs, write_qcow2
from corral.guest.tools import (
    PHASES,
    ProgressFn,
    recipe_files,
    recipe_text,
    sha256_file,
    write_atomic,
)

#: Kernel command line for the reference guest. The parameters past ``panic=-1`` each cut
#: the boot under TCG by the time given (measured here, medians of interleaved boots):
#:
#: - ``root=`` and ``rw`` are read by the initramfs;
#: - ``quiet`` keeps the serial console (slow under TCG) nearly silent;
#: - ``panic=-1`` turns a kernel panic into an immediate reset, which a supervisor sees (a
#:   RESET event, the panic text in the serial log) instead of a guest spinning forever;
#: - ``cryptomgr.notests`` skips the crypto self-tests (0.35 s);
#: - ``rodata=off`` skips write-protecting the kernel image and its W+X audit (0.15 s). It
#:   only weakens the guest kernel against exploits from inside this throw-away test guest;
#: - ``acpi=noirq`` routes PCI interrupts through the BIOS's ``$PIR`` table instead of ACPI:
#:   enabling the ACPI interrupt link of each virtio device runs AML, 0.12 s per device
#:   (0.25 s with a disk and a NIC). ACPI itself, and its power button, stay;
#: - ``noapictimer``: no local APIC timer, whose calibration waits 0.1 s (25 ticks at HZ
#:   250) on every boot; the HPET (or the PIT) drives the clock instead. On one vCPU that
#:   costs nothing (tickless as before, same idle CPU); with more, the tick stays periodic
#:   and broadcast (an idle 2-vCPU guest: 4.7 % of a host CPU instead of 2.5 %). Under KVM,
#:   where the calibration is skipped anyway, the APIC timer would be the better choice;
#: - ``noreplace-smp`` keeps the ``lock`` prefixes that a kernel booting on one CPU rewrites
#:   one ``text_poke`` at a time, each a page-table switch that flushes TCG's TLB (0.13 s);
#:   the prefix costs TCG nothing on one vCPU;
#: - ``initcall_blacklist=tracer_init_tracefs`` leaves out ftrace's tracefs files (a
#:   thousand trace events' directories, 0.04-0.06 s): there is no ``/sys/kernel/tracing``
#:   to debug with; remove it to get them back.
KERNEL_CMDLINE = (
    "console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests rodata=off "
    "acpi=noirq noapictimer noreplace-smp initcall_blacklist=tracer_init_tracefs"
)
#: Printed alone on a line on the serial console when a boot is complete: the SSH server
#: listens on port 22, the seed was read, the ACPI power button works. Like every marker line
#: it is written with a newline before it, so it never shares a line with an unfinished shell
#: prompt (an empty line may precede it).
READY_MARKER = "corral-ready"
#: Every second: ``corral-heartbeat <guest uptime in seconds>`` alone on a line of the
#: console (written with a newline before it too, so blank lines separate heartbeats).
HEARTBEAT_PREFIX = "corral-heartbeat"
#: The lines that frame the guest's SSH host key on the console, before :data:`READY_MARKER`
#: (as cloud-init prints them): each alone on its line, between them one
#: ``ssh-ed25519 <base64> root@<hostname>`` line per key.
HOST_KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
HOST_KEYS_END = "-----END SSH HOST KEY KEYS-----"
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

#: Layout version of ``manifest.json``; part of the key.
_FORMAT = 1
_KEY_LENGTH = 16
_GUEST_FILES = ("bzImage", "vmlinux", "initrd.img", "root.qcow2")
#: The builder's modules, whose source the key hashes: a change in any of them rebuilds.
_BUILDER_MODULES = (
    "build",
    "debian",
    "elf",
    "initramfs",
    "kernel",
    "programs",
    "rootfs",
    "tools",
)
#: The dynamically linked programs, relative to ``/``; with the libraries they load.
PROGRAMS = ("usr/sbin/dropbear", "usr/bin/dropbearkey", "usr/lib/sftp-server", "sbin/resize2fs")


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


# --------------------------------------------------------------------------------------------
# Keys and the cache


def _builder_sources() -> list[tuple[str, bytes]]:
    """The source of every builder module as (file name, content) pairs."""
    package = resources.files("corral.guest")
    return [(f"{name}.py", (package / f"{name}.py").read_bytes()) for name in _BUILDER_MODULES]


def recipe_key(pins: Sequence[PackagePin]) -> str:
    """The content hash that names a build.

    It covers every recipe file, the source of every builder module (``build``, ``debian``,
    ``kernel``, ``initramfs``, ``rootfs`` and ``tools``) and the pinned packages (name,
    version and ``.deb`` hash), so a change to any of them gives a new key.

    :param pins: the packages the guest is built from.
    :return: 16 lower-case hex digits.
    """
    digest = hashlib.sha256()
    digest.update(b"corral reference guest %d\n" % _FORMAT)
    for name, content in _builder_sources():
        digest.update(f"builder {name} {hashlib.sha256(content).hexdigest()}\n".encode())
    for name, content in recipe_files():
        digest.update(f"recipe {name} {hashlib.sha256(content).hexdigest()}\n".encode())
    for pin in sorted(pins, key=lambda p: p.name):
        digest.update(f"package {pin.name} {pin.version} {pin.sha256}\n".encode())
    return digest.hexdigest()[:_KEY_LENGTH]


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
    pins = read_pins(guest_root)
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
        old_pins = None if force else read_pins(guest_root)
        pins, debs = obtain_packages(guest_root, old_pins, work, report)
        key = recipe_key(pins)
        target = guest_root / key
        existing = _load_guest(target)
        if existing is not None and not force:
            write_pins(guest_root, pins)
            return existing
        out = work / key
        out.mkdir()
        _build_into(out, key, pins, debs, work, report)
        _publish(out, target)
        write_pins(guest_root, pins)
        prune_debs(guest_root, pins)
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


# --------------------------------------------------------------------------------------------
# The build steps


def _build_into(
    out: Path,
    key: str,
    pins: Sequence[PackagePin],
    debs: Mapping[str, Path],
    work: Path,
    report: ProgressFn,
) -> None:
    """Build every artefact of the guest into ``out`` (``manifest.json`` last)."""
    kernel_pin = next(p for p in pins if is_kernel_package(p.name))

    report("kernel", PHASES["kernel"])
    kernel_tree = work / "kernel-deb"
    unpack(debs[kernel_pin.name], kernel_tree)
    version = kernel_version(kernel_tree)
    shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{version}", out / "bzImage")
    vmlinux = extract_vmlinux((out / "bzImage").read_bytes())
    if pvh_entry(vmlinux) is None:
        raise GuestBuildError(
            f"the vmlinux of {kernel_pin.name} {kernel_pin.version} has no PVH entry note "
            "(XEN_ELFNOTE_PHYS32_ENTRY): QEMU cannot boot it directly"
        )
    (out / "vmlinux").write_bytes(vmlinux)
    del vmlinux

    report("initramfs", PHASES["initramfs"])
    busybox_tree = work / "busybox-deb"
    unpack(debs[BUSYBOX_PACKAGE], busybox_tree)
    busybox = busybox_tree / "bin" / "busybox"
    if not busybox.is_file():
        raise GuestBuildError(f"{BUSYBOX_PACKAGE} has no /bin/busybox")
    tree = ModuleTree(kernel_tree / "lib" / "modules" / version)
    at_boot = parse_module_list(recipe_text("modules").decode())
    after_ready = parse_module_list(recipe_text("modules-after-ready").decode())
    order = [(name, prepare_module(ko)) for name, ko in resolve_modules(at_boot, tree)]
    write_initramfs(out / "initrd.img", busybox, order)
    in_initramfs = {name for name, _ in order}
    later = [name for name, _ in resolve_modules(after_ready, tree) if name not in in_initramfs]
    root_files = [
        RootFile(f"lib/modules/{version}/{path}", content)
        for path, content in module_directory([*at_boot, *after_ready], tree).items()
    ]
    shutil.rmtree(kernel_tree)

    report("rootfs", PHASES["rootfs"])
    program_tree = work / "program-debs"
    for name in PROGRAM_PACKAGES:
        unpack(debs[name], program_tree)
    staged_programs = program_files(program_tree, PROGRAMS)
    shutil.rmtree(program_tree)
    raw = work / "root.raw"
    make_rootfs(raw, key, busybox, work / "rootfs", [*root_files, *staged_programs])

    report("qcow2", PHASES["qcow2"])
    write_qcow2(raw, out / "root.qcow2")
    raw.unlink()

    manifest = {
        "format": _FORMAT,
        "key": key,
        "kernel_version": version,
        "cmdline": KERNEL_CMDLINE,
        "ready_marker": READY_MARKER,
        "modules": [name for name, _ in order],
        "modules_after_ready": later,
        "programs": [f"/{f.path}" for f in staged_programs],
        "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in pins],
        "files": {name: sha256_file(out / name) for name in _GUEST_FILES},
    }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=2).encode() + b"\n")
