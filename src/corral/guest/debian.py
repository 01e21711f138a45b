"""The Debian packages the reference guest is made of: resolved, pinned, downloaded, unpacked.

Downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``, never installed: the
kernel image package that :data:`KERNEL_META_PACKAGE` depends on, :data:`BUSYBOX_PACKAGE`,
and the SSH server with its libraries' packages (:data:`PROGRAM_PACKAGES`).
:func:`obtain_packages` resolves their versions once; the versions are pinned
(:class:`PackagePin`) in ``<cache_dir>/guest/packages.json`` (:func:`read_pins`,
:func:`write_pins`) and the ``.deb`` files kept in ``<cache_dir>/guest/debs/``, so that later
builds work offline and give the same kernel.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import GuestBuildError
from corral.guest.tools import PHASES, ProgressFn, run, sha256_file, write_atomic

#: The Debian package whose dependency is the kernel image package.
KERNEL_META_PACKAGE = "linux-image-amd64"
#: The Debian package that provides the static busybox.
BUSYBOX_PACKAGE = "busybox-static"
#: The dynamically linked programs' packages: the SSH server (``dropbear-bin``: ``dropbear``
#: and ``dropbearkey``), OpenSSH's SFTP server (which dropbear runs for the ``sftp``
#: subsystem: ``scp`` and ``sftp`` clients), ``resize2fs`` (``e2fsprogs``: the root file
#: system grows to the disk's size), and the packages of the shared libraries they load. The
#: build checks this list against the programs' ``DT_NEEDED`` entries and copies only the
#: libraries they name.
PROGRAM_PACKAGES = (
    "dropbear-bin",
    "openssh-sftp-server",
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
)
#: The packages pinned by name; the kernel image package is pinned too, resolved through
#: :data:`KERNEL_META_PACKAGE`.
NAMED_PACKAGES = (BUSYBOX_PACKAGE, *PROGRAM_PACKAGES)

#: Layout version of ``packages.json``.
_FORMAT = 1


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


def read_pins(guest_root: Path) -> list[PackagePin] | None:
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


def write_pins(guest_root: Path, pins: Sequence[PackagePin]) -> None:
    """Record the pins (unless they are already recorded, keeping their resolution time)."""
    if read_pins(guest_root) == list(pins):
        return
    data = {
        "format": _FORMAT,
        "resolved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": [
            {"name": p.name, "version": p.version, "filename": p.filename, "sha256": p.sha256}
            for p in pins
        ],
    }
    write_atomic(guest_root / "packages.json", json.dumps(data, indent=2).encode() + b"\n")


def prune_debs(guest_root: Path, pins: Sequence[PackagePin]) -> None:
    """Remove the kept ``.deb`` files that no pin names."""
    keep = {pin.filename for pin in pins}
    for deb in (guest_root / "debs").glob("*.deb"):
        if deb.name not in keep:
            deb.unlink(missing_ok=True)


def obtain_packages(
    guest_root: Path,
    pins: Sequence[PackagePin] | None,
    work: Path,
    report: ProgressFn,
) -> tuple[list[PackagePin], dict[str, Path]]:
    """The pinned packages and their ``.deb`` files (in ``<guest_root>/debs``).

    The guest is made of the kernel image package and the :data:`NAMED_PACKAGES`. A pinned
    package whose file is present is used as it is; one whose file is missing is downloaded
    at its pinned version. A package without a pin (all of them without ``pins``, or one
    that a recipe change added) is resolved to the archive's current version and
    downloaded: the kernel through :data:`KERNEL_META_PACKAGE`, the others by name. Pins of
    packages the guest is no longer made of are dropped.

    :param guest_root: ``<cache_dir>/guest``.
    :param pins: the recorded pins, or ``None`` to resolve every package anew.
    :param work: a scratch directory for downloads.
    :param report: progress callback.
    :return: the pins (kernel first, then :data:`NAMED_PACKAGES` in order) and each
        package's file by package name.
    :raise GuestBuildError: apt failed, or a pinned package could not be fetched unchanged.
    """
    report("download", PHASES["download"])
    debs_dir = guest_root / "debs"
    debs_dir.mkdir(exist_ok=True)
    kernel_pin = next((p for p in pins or () if is_kernel_package(p.name)), None)
    named = {p.name: p for p in pins or () if p.name in NAMED_PACKAGES}

    kept = [p for p in (kernel_pin, *named.values()) if p is not None]
    present = {
        pin.name: debs_dir / pin.filename
        for pin in kept
        if (debs_dir / pin.filename).is_file()
        and sha256_file(debs_dir / pin.filename) == pin.sha256
    }
    missing = [pin for pin in kept if pin.name not in present]
    if missing:
        fetched = _apt_download(work, [f"{p.name}={p.version}" for p in missing])
        for pin in missing:
            deb = fetched.get(pin.name)
            if deb is None or sha256_file(deb) != pin.sha256:
                raise GuestBuildError(
                    f"the pinned package {pin.name} {pin.version} could not be fetched again "
                    "unchanged; rebuild with force to resolve the package versions anew"
                )
            present[pin.name] = _keep_deb(deb, debs_dir)

    unpinned = [name for name in NAMED_PACKAGES if name not in named]
    specs = list(unpinned)
    if kernel_pin is None:
        meta = _apt_download(work, [KERNEL_META_PACKAGE])[KERNEL_META_PACKAGE]
        specs.insert(0, _kernel_dependency(meta))
        report("download", PHASES["download"] + 0.02)
    resolved: dict[str, PackagePin] = {}
    if specs:
        fetched = _apt_download(work, specs)
        for spec in specs:
            name = spec.split("=")[0]
            deb = fetched[name]
            resolved[name] = PackagePin(
                name=name,
                version=_deb_fields(deb, "Version")["Version"],
                filename=deb.name,
                sha256=sha256_file(deb),
            )
            present[name] = _keep_deb(deb, debs_dir)
    if kernel_pin is None:
        kernel_pin = next(p for p in resolved.values() if is_kernel_package(p.name))
    named.update((n, p) for n, p in resolved.items() if not is_kernel_package(n))
    ordered = [kernel_pin, *(named[name] for name in NAMED_PACKAGES)]
    return ordered, {pin.name: present[pin.name] for pin in ordered}


def is_kernel_package(name: str) -> bool:
    """Whether a package name is a kernel image package (``linux-image-6.1.0-41-amd64``).

    :param name: a Debian package name.
    """
    return name.startswith("linux-image-") and name != KERNEL_META_PACKAGE


def _keep_deb(deb: Path, debs_dir: Path) -> Path:
    target = debs_dir / deb.name
    deb.replace(target)
    return target


def _apt_download(work: Path, specs: Sequence[str]) -> dict[str, Path]:
    """``apt-get download`` the packages into a fresh directory; map package name -> file."""
    target = Path(tempfile.mkdtemp(dir=work, prefix="apt-"))
    try:
        run(["apt-get", "download", "-q", *specs], cwd=target)
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
    out = run(["dpkg-deb", "--field", deb, *names]).stdout.decode()
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


def unpack(deb: Path, target: Path) -> None:
    """Unpack a ``.deb``'s files into ``target`` (``dpkg-deb -x``; nothing is installed)."""
    run(["dpkg-deb", "-x", deb, target])


def kernel_version(tree: Path) -> str:
    """The ``uname -r`` of the kernel in an unpacked kernel image package.

    :param tree: where the package was unpacked.
    :raise GuestBuildError: not exactly one kernel, or no ``/boot/vmlinuz-<version>``.
    """
    versions = sorted(p.name for p in (tree / "lib" / "modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise GuestBuildError(f"expected one kernel in the package, found {versions}")
    version = versions[0]
    if not (tree / "boot" / f"vmlinuz-{version}").is_file():
        raise GuestBuildError(f"the kernel package has no /boot/vmlinuz-{version}")
    return version
