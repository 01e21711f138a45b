"""Asking a QEMU binary what it can do: one ``-machine none`` run answering QMP queries."""

from __future__ import annotations

import json
import re
from typing import Any

from corral.errors import HostError
from corral.host.facts import INSTALL_HINT
from corral.host.models import MachineType

#: Seconds the QMP probe may take before QEMU is killed.
PROBE_TIMEOUT = 10.0

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
#: A display front end's name in ``-display help``'s list (the heading is not one).
_DISPLAY = re.compile(r"[a-z][a-z0-9-]*")


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
        raise HostError(f"cannot start QEMU {binary}: {exc.strerror}; {INSTALL_HINT}") from exc
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
    return {**parse_probe(answers), "displays": query_displays(binary, timeout)}


def parse_displays(text: str) -> list[str]:
    """The display front ends ``qemu -display help`` lists on its standard output, sorted.
    Pure.

    A front end built as a module that is not installed (Debian's ``gtk`` and ``sdl`` without
    ``qemu-system-gui``) is reported on standard error, not listed.
    """
    return sorted({word for line in text.splitlines() if _DISPLAY.fullmatch(word := line.strip())})


def query_displays(binary: str, timeout: float = PROBE_TIMEOUT) -> list[str]:
    """The display front ends ``binary`` has (``none``, ``curses``, ``gtk``, ...).

    :raise HostError: QEMU cannot be started or does not answer in time.
    """
    import subprocess

    try:
        proc = subprocess.run(
            [binary, "-display", "help"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except OSError as exc:
        raise HostError(f"cannot start QEMU {binary}: {exc.strerror}; {INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"QEMU {binary} did not list its displays within {timeout:g} s") from exc
    return parse_displays(proc.stdout.decode(errors="replace"))
