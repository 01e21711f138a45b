"""Facts about the host that corral reads fresh: the QEMU binary, CPUs, memory, firmware."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from corral.errors import HostError

#: Environment variable naming the QEMU binary to use.
QEMU_ENV = "CORRAL_QEMU"
#: Where a QEMU binary is looked for after ``$PATH``.
QEMU_FALLBACKS = ("/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm")
#: Directories holding QEMU firmware descriptors (``docs/interop/firmware.json``), by priority.
FIRMWARE_DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")
#: OVMF (code, vars template) pairs looked for when no descriptor names one.
OVMF_FALLBACKS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.fd", "/usr/share/edk2/x64/OVMF_VARS.fd"),
    ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),
    ("/usr/share/qemu/OVMF.fd", None),
    ("/usr/share/ovmf/OVMF.fd", None),
)
#: Firmware descriptor features that make an image unsuitable as the plain UEFI default.
_UNWANTED_FIRMWARE_FEATURES = frozenset(
    {"requires-smm", "secure-boot", "enrolled-keys", "amd-sev-es"}
)

INSTALL_HINT = "install it with: apt-get install qemu-system-x86"


def find_qemu() -> str:
    """The QEMU binary: ``$CORRAL_QEMU``, else ``qemu-system-x86_64`` on ``$PATH``, else a
    distribution's ``qemu-kvm``.

    :raise HostError: no usable binary.
    """
    env = os.environ.get(QEMU_ENV)
    if env:
        path = shutil.which(env)
        if path is None:
            raise HostError(f"${QEMU_ENV}={env} is not an executable file")
        return str(Path(path).absolute())
    found = shutil.which("qemu-system-x86_64")
    if found:
        return str(Path(found).absolute())
    for candidate in QEMU_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise HostError(f"qemu-system-x86_64 not found on PATH; {INSTALL_HINT}")


def binary_identity(binary: str) -> dict[str, Any]:
    """What identifies a binary for the cache: real path, size, mtime (ns) and inode.

    :param binary: the binary's path.
    :raise HostError: it does not exist.
    """
    try:
        real = os.path.realpath(binary)
        st = Path(real).stat()
    except OSError as exc:
        raise HostError(f"QEMU binary {binary}: {exc.strerror}; {INSTALL_HINT}") from exc
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


# --- Host facts read on every call ------------------------------------------------------------


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    """The running kernel's boot id ('' if unreadable): a KVM verdict is valid for one boot.

    :param path: the file to read (a parameter for tests).
    """
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (``MemTotal``, ``MemAvailable``, ...).

    :param text: the file's content.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        out[key.strip()] = int(parts[0]) * scale
    return out


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """The parsed ``/proc/meminfo`` (empty if unreadable).

    :param path: the file to read (a parameter for tests).
    """
    try:
        return parse_meminfo(Path(path).read_text())
    except OSError:
        return {}


def pick_ovmf(descriptors: list[dict[str, Any]]) -> tuple[str, str | None] | None:
    """The first plain UEFI flash image for x86_64 among QEMU firmware descriptors. Pure.

    Secure-boot, SMM-requiring and SEV-ES images are skipped: they need machine options a
    plain guest does not have.

    :param descriptors: parsed descriptor files, in priority order.
    :return: (code, vars template) paths, or None.
    """
    for desc in descriptors:
        if "uefi" not in desc.get("interface-types", []):
            continue
        targets = desc.get("targets", [])
        if not any(t.get("architecture") == "x86_64" for t in targets):
            continue
        if _UNWANTED_FIRMWARE_FEATURES & set(desc.get("features", [])):
            continue
        mapping = desc.get("mapping", {})
        if mapping.get("device") != "flash":
            continue
        code = mapping.get("executable", {}).get("filename")
        template = mapping.get("nvram-template", {}).get("filename")
        if isinstance(code, str):
            return code, template if isinstance(template, str) else None
    return None


def find_ovmf(
    descriptor_dirs: tuple[str, ...] = FIRMWARE_DESCRIPTOR_DIRS,
    fallbacks: tuple[tuple[str, str | None], ...] = OVMF_FALLBACKS,
) -> tuple[str | None, str | None]:
    """OVMF code and its variable template: from QEMU's firmware descriptors, else known paths.

    A descriptor in an earlier directory overrides one of the same file name in a later one;
    descriptors are then taken in file name order, as QEMU's interop spec says.

    :param descriptor_dirs: descriptor directories, highest priority first.
    :param fallbacks: (code, vars) pairs to try when no descriptor names an existing image.
    :return: (code, vars); (None, None) when no OVMF is installed.
    """
    by_name: dict[str, Path] = {}
    for directory in descriptor_dirs:
        try:
            entries = sorted(Path(directory).glob("*.json"))
        except OSError:
            continue
        for entry in entries:
            by_name.setdefault(entry.name, entry)
    descriptors = []
    for name in sorted(by_name):
        try:
            data = json.loads(by_name[name].read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            descriptors.append(data)
    while descriptors:
        picked = pick_ovmf(descriptors)
        if picked is None:
            break
        code, template = picked
        if Path(code).is_file():
            return code, template if template and Path(template).is_file() else None
        descriptors = descriptors[1:]
    for code, template in fallbacks:
        if Path(code).is_file():
            return code, template if template and Path(template).is_file() else None
    return None, None
