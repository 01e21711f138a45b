"""The reference guest's root disk: staged in a directory, written by ``mkfs.ext4 -d``, never
mounted, then converted to qcow2.

:func:`make_rootfs` stages busybox, its applet links, the recipe's files and more files
(:class:`RootFile`: the kernel modules that :func:`~corral.guest.initramfs.module_directory`
lays out, the SSH server that :func:`~corral.guest.programs.program_files` collects), has
``mkfs.ext4 -d`` copy them into an ext4 image and ``debugfs`` make every file root's with a
fixed time (so the image is reproducible and the build needs no root); :func:`write_qcow2`
converts the raw image.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from corral.errors import GuestBuildError
from corral.guest.tools import EPOCH, recipe_text, run

#: Size of the root disk as the guest sees it.
ROOT_DISK_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class RootFile:
    """A file or a symbolic link to put in the root file system."""

    #: Path relative to ``/`` (``usr/sbin/dropbear``); missing directories are created (0755).
    path: str
    #: The file's content.
    content: bytes = b""
    #: The file's permission bits.
    mode: int = 0o644
    #: The target of a symbolic link; ``None`` for a regular file.
    link: str | None = None


#: Recipe file -> (path in the root file system, mode).
_ROOT_FILES: Mapping[str, tuple[str, int]] = {
    "inittab": ("etc/inittab", 0o644),
    "rcS": ("etc/init.d/rcS", 0o755),
    "corral-heartbeat": ("sbin/corral-heartbeat", 0o755),
    "corral-shutdown": ("sbin/corral-shutdown", 0o755),
    "corral-nocloud": ("sbin/corral-nocloud", 0o755),
    "nocloud.awk": ("usr/lib/corral/nocloud.awk", 0o644),
    "udhcpc.script": ("etc/udhcpc/default.script", 0o755),
    "acpi-power-button": ("etc/acpi/PWRF/00000080", 0o755),
    "acpid.conf": ("etc/acpid.conf", 0o644),
    "modules-after-ready": ("etc/modules", 0o644),
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
    "usr/lib": 0o755,
    "usr/lib/corral": 0o755,
    "etc": 0o755,
    "etc/init.d": 0o755,
    "etc/acpi": 0o755,
    "etc/acpi/PWRF": 0o755,
    "etc/dropbear": 0o755,
    "etc/udhcpc": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "root/.ssh": 0o700,
    "var": 0o755,
    "var/log": 0o755,
    "var/lib": 0o755,
    "var/lib/cloud": 0o755,
    "var/lib/cloud/scripts": 0o755,
    "mnt": 0o755,
    "lib": 0o755,
    "lib/modules": 0o755,
}


def _busybox_applets(busybox: Path) -> list[str]:
    """The applet paths busybox installs (``bin/ls``, ``sbin/init``, ...)."""
    out = run([busybox, "--list-full"]).stdout.decode()
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


def make_rootfs(
    raw: Path,
    key: str,
    busybox: Path,
    staging: Path,
    files: Iterable[RootFile] = (),
) -> None:
    """Stage the root file system and write it as an ext4 image into the sparse file ``raw``.

    :param raw: the raw disk image to write (:data:`ROOT_DISK_BYTES` long).
    :param key: the build's key, from which the file system's UUID is derived.
    :param busybox: the static busybox to install.
    :param staging: a directory to create and stage the files in; ``debugfs.cmds`` is
        written next to ``raw``.
    :param files: more files and symbolic links, such as the kernel modules below
        ``lib/modules/<version>`` or the SSH server and its libraries.
    :raise GuestBuildError: a tool failed, or busybox lists unexpected applets.
    """
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
        target.write_bytes(recipe_text(recipe_name))
        target.chmod(mode)
    for file in files:
        _stage_file(staging, file)
    for directory, mode in _ROOT_DIRS.items():
        (staging / directory).chmod(mode)

    fs_uuid = str(uuid.UUID(hashlib.sha256(f"corral-root {key}".encode()).hexdigest()[:32]))
    with raw.open("wb") as handle:
        handle.truncate(ROOT_DISK_BYTES)
    fake_time = {"E2FSPROGS_FAKE_TIME": str(EPOCH)}
    run(
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
            commands.append(f"sif {inode} {field} @{EPOCH}\n")
    script = raw.parent / "debugfs.cmds"
    script.write_text("".join(commands))
    proc = run(["debugfs", "-w", "-f", script, raw], env=fake_time)
    errors = [
        line
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if errors:
        raise GuestBuildError(f"debugfs could not fix up the root file system: {errors[0]}")


def _stage_file(staging: Path, file: RootFile) -> None:
    """Write ``file`` below ``staging``, creating missing directories (0755)."""
    target = staging / file.path
    for parent in reversed(target.relative_to(staging).parents[:-1]):
        if not (staging / parent).is_dir():
            (staging / parent).mkdir(mode=0o755)
            (staging / parent).chmod(0o755)
    if target.is_symlink() or target.exists():
        target.unlink()  # a busybox applet link that the file replaces
    if file.link is not None:
        target.symlink_to(file.link)
    else:
        target.write_bytes(file.content)
        target.chmod(file.mode)


def write_qcow2(raw: Path, qcow2: Path) -> None:
    """Convert the raw root disk image into the qcow2 file the guest boots from."""
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, qcow2])
