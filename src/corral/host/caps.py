"""Host capabilities: what this QEMU binary and this host can do, as data.

The data model is here; :func:`probe` asks the binary once (through QMP on ``-machine none``)
and the result is cached by the binary's identity, so every later command reads a small JSON
file instead of starting QEMU.

The cache (``<cache_dir>/hostcaps-<hash of the binary's real path>.json``) has two parts:

- what QEMU answered, valid while the binary's real path, size, mtime and inode are unchanged;
- the KVM self-test verdict (:mod:`corral.host.kvm`), valid additionally only for the same
  kernel boot (``/proc/sys/kernel/random/boot_id``), the same CPU model and the same state of
  ``/dev/kvm`` (present, accessible), which is checked on every load.

Facts that are cheap and can change at any time (host CPUs and memory, OVMF firmware, the
``CORRAL_ACCEL`` override) are read on every call, never cached.

The accelerator is chosen by :func:`decide_accel`: ``$CORRAL_ACCEL=tcg`` forces TCG,
``$CORRAL_ACCEL=kvm`` forces KVM without a test; otherwise KVM only when this QEMU has it,
``/dev/kvm`` is usable and the functional self-test passed; else TCG, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from corral.errors import HostError, InvalidInput

if TYPE_CHECKING:
    from corral.host.kvm import KvmVerdict

_log = logging.getLogger(__name__)

#: Environment variable naming the QEMU binary to use.
QEMU_ENV = "CORRAL_QEMU"
#: Environment variable forcing the accelerator: ``kvm``, ``tcg`` or ``auto`` (the default).
ACCEL_ENV = "CORRAL_ACCEL"
#: Where a QEMU binary is looked for after ``$PATH``.
QEMU_FALLBACKS = ("/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm")
#: Seconds the QMP probe may take before QEMU is killed.
PROBE_TIMEOUT = 10.0
#: Version of the cache file layout; older files are ignored.
CACHE_FORMAT = 1
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

_INSTALL_HINT = "install it with: apt-get install qemu-system-x86"


class MachineType(BaseModel):
    """One ``-machine`` type as ``query-machines`` reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: The versioned type this alias points at (``pc`` -> ``pc-i440fx-7.2``).
    alias: str | None = None
    max_cpus: int
    is_default: bool = False
    #: QEMU marks the type deprecated.
    deprecated: bool = False


class HostCaps(BaseModel):
    """What :func:`corral.qemu.argv.build_argv` may rely on. Pure data: no I/O in here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Absolute path of ``qemu-system-x86_64``.
    qemu_binary: str
    #: (major, minor, micro).
    qemu_version: tuple[int, int, int]
    #: Machine types by name, aliases included.
    machines: dict[str, MachineType]
    #: Device types this binary has (``virtio-blk-pci``, ``isa-serial``, ...).
    devices: frozenset[str]
    #: Accelerators compiled in (``kvm``, ``tcg``).
    accelerators: frozenset[str]
    #: The accelerator to use: KVM only when its functional self-test passed.
    accel: Literal["kvm", "tcg"]
    #: Why KVM is not used (empty when it is).
    kvm_reason: str = ""
    #: Whether ``-sandbox`` (seccomp) is available.
    seccomp: bool = False
    #: OVMF firmware code image for UEFI boot, if installed.
    ovmf_code: str | None = None
    #: Online host CPUs and memory in bytes.
    host_cpus: int
    host_memory: int
    #: The OVMF variable-store template that matches :attr:`ovmf_code` (copy it per VM).
    ovmf_vars: str | None = None
    #: ``-cpu`` models this binary knows (``qemu64``, ``host``, ``Skylake-Server``, ...).
    cpu_models: frozenset[str] = frozenset()
    #: The KVM self-test's outcome in one line, with its duration (empty when it did not run).
    kvm_test: str = ""


# --- Finding the binary -----------------------------------------------------------------------


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
    raise HostError(f"qemu-system-x86_64 not found on PATH; {_INSTALL_HINT}")


def binary_identity(binary: str) -> dict[str, Any]:
    """What identifies a binary for the cache: real path, size, mtime (ns) and inode.

    :param binary: the binary's path.
    :raise HostError: it does not exist.
    """
    try:
        real = os.path.realpath(binary)
        st = Path(real).stat()
    except OSError as exc:
        raise HostError(f"QEMU binary {binary}: {exc.strerror}; {_INSTALL_HINT}") from exc
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


# --- QMP probe --------------------------------------------------------------------------------

_PROBE_COMMANDS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("version", "query-version", None),
    ("machines", "query-machines", None),
    ("devices", "qom-list-types", {"implements": "device", "abstract": False}),
    ("accels", "qom-list-types", {"implements": "accel", "abstract": False}),
    ("kvm", "query-kvm", None),
    ("sandbox", "query-command-line-options", {"option": "sandbox"}),
    ("cpus", "query-cpu-definitions", None),
)
_PROBE_COMMAND_NAMES = {key: command for key, command, _ in _PROBE_COMMANDS}


def parse_version(raw: dict[str, Any]) -> tuple[int, int, int]:
    """``query-version``'s answer as (major, minor, micro). Pure.

    :param raw: the ``return`` value.
    """
    q = raw["qemu"]
    return int(q["major"]), int(q["minor"]), int(q["micro"])


def parse_machines(raw: list[dict[str, Any]]) -> dict[str, MachineType]:
    """``query-machines``' answer as machine types by name, aliases included. Pure.

    ``{"name": "pc-i440fx-7.2", "alias": "pc", ...}`` gives two entries: ``pc-i440fx-7.2``
    and ``pc`` (whose :attr:`MachineType.alias` is ``pc-i440fx-7.2``).

    :param raw: the ``return`` value.
    """
    out: dict[str, MachineType] = {}
    for m in raw:
        common = {
            "max_cpus": int(m.get("cpu-max", 1)),
            "is_default": bool(m.get("is-default", False)),
            "deprecated": bool(m.get("deprecated", False)),
        }
        out[m["name"]] = MachineType(name=m["name"], **common)
        alias = m.get("alias")
        if alias:
            out[alias] = MachineType(name=alias, alias=m["name"], **common)
    return out


def parse_probe(answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The QEMU part of the cache from QMP answers by command id. Pure.

    :param answers: each probe command's response object (``return`` or ``error``).
    :raise HostError: a required answer is missing or is an error.
    """

    def ret(key: str) -> Any:
        answer = answers.get(key)
        if answer is None or "return" not in answer:
            why = (answer or {}).get("error", {}).get("desc", "no answer")
            raise HostError(f"QEMU probe: {_PROBE_COMMAND_NAMES[key]} failed: {why}")
        return answer["return"]

    # Concrete accelerator types are named <name>-accel; the abstract base "accel" is not one.
    accels = {
        t["name"].removesuffix("-accel") for t in ret("accels") if t["name"].endswith("-accel")
    }
    kvm_answer = answers.get("kvm", {}).get("return")
    if isinstance(kvm_answer, dict) and kvm_answer.get("present"):
        accels.add("kvm")
    cpus_answer = answers.get("cpus", {}).get("return", [])
    return {
        "version": list(parse_version(ret("version"))),
        "machines": {
            name: m.model_dump() for name, m in sorted(parse_machines(ret("machines")).items())
        },
        "devices": sorted(t["name"] for t in ret("devices")),
        "accelerators": sorted(accels),
        # An unknown option is an error answer: no seccomp support compiled in.
        "seccomp": bool(answers.get("sandbox", {}).get("return")),
        "cpu_models": sorted(c["name"] for c in cpus_answer if isinstance(c, dict)),
    }


def probe_argv(binary: str) -> list[str]:
    """The command line of the probing QEMU: no machine, no defaults, QMP on stdio.

    :param binary: the QEMU binary.
    """
    return [
        binary,
        "-machine",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-qmp",
        "stdio",
    ]


def query_qemu(binary: str, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Start ``binary`` once and ask it what it can do over QMP on stdio.

    All commands are written at once (QMP answers them in order, each tagged with its id),
    followed by ``quit``; QEMU is killed if it has not finished within ``timeout``.

    :param binary: the QEMU binary.
    :param timeout: seconds before QEMU is killed.
    :return: the QEMU part of the cache (see :func:`parse_probe`).
    :raise HostError: QEMU cannot be started, does not answer in time, or answers badly.
    """
    import subprocess

    lines = [{"execute": "qmp_capabilities"}]
    for key, command, arguments in _PROBE_COMMANDS:
        msg: dict[str, Any] = {"execute": command, "id": key}
        if arguments is not None:
            msg["arguments"] = arguments
        lines.append(msg)
    lines.append({"execute": "quit"})
    request = "".join(json.dumps(line) + "\n" for line in lines).encode()
    argv = probe_argv(binary)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise HostError(f"cannot start QEMU {binary}: {exc.strerror}; {_INSTALL_HINT}") from exc
    try:
        out, err = proc.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise HostError(
            f"QEMU {binary} did not answer its capability probe within {timeout:g} s"
        ) from exc
    finally:
        if proc.poll() is None:  # interrupted: never leave it behind
            proc.kill()
            proc.wait()
    answers: dict[str, dict[str, Any]] = {}
    for raw in out.splitlines():
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and isinstance(msg.get("id"), str):
            answers[msg["id"]] = msg
    if not answers:
        stderr = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        last = stderr[-1] if stderr else f"exit status {proc.returncode}"
        raise HostError(f"QEMU {binary} did not answer its capability probe: {last}")
    return parse_probe(answers)


# --- Accelerator choice -----------------------------------------------------------------------


def accel_override() -> Literal["kvm", "tcg"] | None:
    """``$CORRAL_ACCEL`` as ``kvm`` / ``tcg``, or None for automatic choice.

    :raise InvalidInput: the variable has another value.
    """
    value = os.environ.get(ACCEL_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value == "kvm":
        return "kvm"
    if value == "tcg":
        return "tcg"
    raise InvalidInput(ACCEL_ENV, f"must be kvm, tcg or auto, not {value!r}")


def decide_accel(
    override: Literal["kvm", "tcg"] | None,
    accelerators: frozenset[str],
    device_problem: str | None,
    verdict: KvmVerdict | None,
) -> tuple[Literal["kvm", "tcg"], str]:
    """Which accelerator to use and why KVM is not (empty reason when it is). Pure.

    :param override: ``$CORRAL_ACCEL`` (see :func:`accel_override`).
    :param accelerators: those compiled into QEMU.
    :param device_problem: why ``/dev/kvm`` cannot be used, None when it can.
    :param verdict: the self-test's verdict (None when it did not run).
    """
    if override == "tcg":
        return "tcg", f"forced by {ACCEL_ENV}=tcg"
    if override == "kvm":
        return "kvm", ""
    reason: str
    if "kvm" not in accelerators:
        reason = "this QEMU was built without KVM support"
    elif device_problem is not None:
        reason = device_problem
    elif verdict is None:
        reason = "KVM self-test did not run"
    elif verdict.usable:
        return "kvm", ""
    else:
        reason = verdict.reason
    if "tcg" not in accelerators:
        reason += "; this QEMU has no TCG either, so it cannot run guests"
    return "tcg", reason


# --- Cache ------------------------------------------------------------------------------------


def cache_path(cache_dir: Path, real_binary: str) -> Path:
    """The cache file for one binary.

    :param cache_dir: the cache directory.
    :param real_binary: the binary's real path.
    """
    digest = hashlib.sha256(real_binary.encode()).hexdigest()[:16]
    return cache_dir / f"hostcaps-{digest}.json"


def read_cache(path: Path) -> dict[str, Any] | None:
    """A cache file's content, or None if it is missing, unreadable or of another format.

    :param path: the cache file.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    return data


def write_cache(path: Path, data: dict[str, Any]) -> None:
    """Write a cache file atomically (temporary file + rename); failures are only logged.

    :param path: the cache file.
    :param data: its content.
    """
    import tempfile

    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)  # not secret; mkstemp's 0600 would hide it from other users
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, sort_keys=True)
        Path(tmp).replace(path)
    except OSError as exc:
        _log.warning("cannot write host capability cache %s: %s", path, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def kvm_entry_valid(entry: Any, current_boot: str, cpu: str, device_state: str) -> bool:
    """Whether a cached KVM verdict still holds. Pure.

    :param entry: the cache's ``kvm`` part.
    :param current_boot: the running kernel's boot id.
    :param cpu: the CPU model the test must have used.
    :param device_state: ``/dev/kvm``'s problem now ('' when usable).
    """
    return (
        isinstance(entry, dict)
        and bool(current_boot)
        and entry.get("boot_id") == current_boot
        and entry.get("cpu") == cpu
        and entry.get("device") == device_state
        and isinstance(entry.get("usable"), bool)
        and isinstance(entry.get("reason"), str)
    )


# --- The probe --------------------------------------------------------------------------------


def probe(
    qemu_binary: str | None = None, cache_dir: Path | None = None, refresh: bool = False
) -> HostCaps:
    """What this host and its QEMU can do, from the cache when it is still valid.

    A cold probe starts QEMU once (about 0.1 s) and, when KVM is a candidate, runs the KVM
    self-test (well under a second when KVM works, its deadline when it does not); a cached
    probe starts nothing.

    :param qemu_binary: the binary; default :func:`find_qemu`.
    :param cache_dir: where the cache lives; default :func:`corral.config.default_cache`.
    :param refresh: ignore the cache (it is rewritten).
    :raise HostError: no QEMU, or it cannot be probed.
    :raise InvalidInput: ``$CORRAL_ACCEL`` has an unknown value.
    """
    from corral.host import kvm

    override = accel_override()
    binary = find_qemu() if qemu_binary is None else _absolute_binary(qemu_binary)
    identity = binary_identity(binary)
    if cache_dir is None:
        from corral.config import default_cache

        cache_dir = default_cache()
    path = cache_path(cache_dir, identity["path"])
    cached = None if refresh else read_cache(path)
    dirty = False
    if cached is not None and cached.get("binary") == identity and "qemu" in cached:
        qemu_part: dict[str, Any] = cached["qemu"]
        kvm_part = cached.get("kvm")
    else:
        qemu_part = query_qemu(binary)
        kvm_part = None
        dirty = True
    accelerators = frozenset(qemu_part.get("accelerators", ()))

    device_problem = kvm.dev_kvm_problem()
    current_boot = boot_id()
    cpu = kvm.KVM_CPU
    verdict: KvmVerdict | None = None
    if kvm_entry_valid(kvm_part, current_boot, cpu, device_problem or ""):
        assert isinstance(kvm_part, dict)
        verdict = kvm.KvmVerdict(
            kvm_part["usable"], kvm_part["reason"], float(kvm_part.get("seconds", 0.0))
        )
    elif override is None and "kvm" in accelerators and device_problem is None:
        verdict = kvm.self_test(binary, cpu=cpu)
        kvm_part = {
            "boot_id": current_boot,
            "cpu": cpu,
            "device": "",
            "usable": verdict.usable,
            "reason": verdict.reason,
            "seconds": round(verdict.seconds, 3),
        }
        dirty = True
    if dirty:
        write_cache(
            path,
            {"format": CACHE_FORMAT, "binary": identity, "qemu": qemu_part, "kvm": kvm_part},
        )

    accel, reason = decide_accel(override, accelerators, device_problem, verdict)
    ovmf_code, ovmf_vars = find_ovmf()
    try:
        return HostCaps(
            qemu_binary=binary,
            qemu_version=tuple(qemu_part["version"]),
            machines=qemu_part["machines"],
            devices=frozenset(qemu_part["devices"]),
            accelerators=accelerators,
            accel=accel,
            kvm_reason=reason,
            seccomp=bool(qemu_part["seccomp"]),
            ovmf_code=ovmf_code,
            ovmf_vars=ovmf_vars,
            host_cpus=host_cpus(),
            host_memory=read_meminfo().get("MemTotal", 0),
            cpu_models=frozenset(qemu_part.get("cpu_models", [])),
            kvm_test=verdict.reason if verdict is not None else "",
        )
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        if dirty:  # fresh from QEMU: a bug, not a stale file
            raise
        _log.warning("ignoring unusable host capability cache %s", path)
        return probe(binary, cache_dir, refresh=True)


def _absolute_binary(binary: str) -> str:
    """``binary`` as an absolute path, looked up on ``$PATH`` when it is a bare name."""
    if os.sep not in binary:
        found = shutil.which(binary)
        if found:
            return str(Path(found).absolute())
    return str(Path(binary).absolute())
