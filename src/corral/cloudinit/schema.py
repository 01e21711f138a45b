"""User-data checked by Debian's own ``cloud-init schema``; network-config by its converter.

corral runs the real cloud-init rather than a copy of its schema: Debian's ``cloud-init``
package is downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (never
installed: the host itself must not become cloud-init managed) into
``<cache>/cloud-init/<version>/``. The version resolved on first use is pinned, with the
``.deb`` file's SHA-256, in ``<cache>/cloud-init/pin.json`` and the ``.deb`` kept beside it,
so later runs are offline and use the same cloud-init. The cache is filled under a lock
(``flock`` on ``<cache>/cloud-init/.lock``) and each tree published by renaming a finished
directory.

cloud-init runs on the host's ``/usr/bin/python3`` with Debian's ``python3-*`` libraries
(:data:`PYTHON_DEPENDENCIES`, installed by ``scripts/setup``)::

    PYTHONPATH=<tree>/usr/lib/python3/dist-packages /usr/bin/python3 -s <tree>/usr/bin/cloud-init

:func:`validate_cloud_config` runs ``cloud-init schema --config-file``;
:func:`net_convert` runs ``cloud-init devel net-convert``, which renders a network-config for
ifupdown (``eni``), netplan or systemd-networkd as an instance would.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from corral.cloudinit.render import (
    CLOUD_CONFIG_HEADER,
    check_user_data_text,
    is_cloud_config,
    parse_cloud_config,
)
from corral.config import default_cache
from corral.errors import HostError, InvalidInput, ToolError
from corral.guest.tools import sha256_file, write_atomic

#: The Debian package.
PACKAGE = "cloud-init"
#: The interpreter cloud-init runs on: the one Debian's ``python3-*`` packages are built for.
PYTHON = "/usr/bin/python3"
#: cloud-init's Python dependencies: import name -> the Debian package that provides it.
PYTHON_DEPENDENCIES: Mapping[str, str] = {
    "yaml": "python3-yaml",
    "jsonschema": "python3-jsonschema",
    "jinja2": "python3-jinja2",
    "configobj": "python3-configobj",
    "requests": "python3-requests",
    "jsonpatch": "python3-jsonpatch",
    "netifaces": "python3-netifaces",
    "oauthlib": "python3-oauthlib",
    "serial": "python3-serial",
}
#: Seconds a cloud-init command may take.
TIMEOUT = 60.0
#: Layout version of ``pin.json``.
_FORMAT = 1
#: Written last into a finished tree: the SHA-256 of the ``.deb`` it was unpacked from.
_MARKER = ".corral-deb-sha256"
_ENTRY = Path("usr/bin/cloud-init")
_SITE = Path("usr/lib/python3/dist-packages")
#: Trees whose Python dependencies were found present in this process.
_checked: set[Path] = set()


@dataclass(frozen=True)
class CloudInitTool:
    """An unpacked cloud-init, ready to run."""

    #: The Debian package version (``22.4.2-1+deb12u4``).
    version: str
    #: Where the package is unpacked.
    root: Path
    #: The command line that runs ``cloud-init``: add its arguments.
    argv: tuple[str, ...]
    #: The environment variables it needs (``PYTHONPATH``), added to a minimal environment.
    env: Mapping[str, str]

    def run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ``cloud-init <args>``; its exit status is the caller's to judge.

        :param args: the arguments (``schema --config-file FILE``).
        :raise ToolError: it did not finish within :data:`TIMEOUT` seconds.
        """
        argv = [*self.argv, *args]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", **self.env}
        try:
            return subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolError(argv, -1, f"no answer within {TIMEOUT:.0f} s") from exc


def cloud_init_tool(cache_dir: Path | None = None) -> CloudInitTool:
    """Debian's cloud-init, unpacked in the cache (fetched and pinned on first use).

    :param cache_dir: corral's cache; :func:`corral.config.default_cache` if ``None``.
    :raise HostError: the package cannot be fetched (no ``apt-get``, no package lists, no
        network), the pinned package cannot be fetched unchanged, or a Python dependency is
        missing (the message names the packages to install).
    """
    base = (cache_dir if cache_dir is not None else default_cache()) / PACKAGE
    base.mkdir(parents=True, exist_ok=True)
    tool = _ready(base)
    if tool is None:
        with _locked(base / ".lock"):
            tool = _ready(base) or _obtain(base)
    _check_dependencies(tool)
    return tool


def validate_cloud_config(text: str, cache_dir: Path | None = None) -> None:
    """Check a cloud-config with ``cloud-init schema``.

    The header may be written as cloud-init itself accepts it (``  #Cloud-Config``); it is
    made ``#cloud-config`` for the check. An empty cloud-config is valid.

    :param text: a cloud-config (see :func:`corral.cloudinit.render.is_cloud_config`).
    :param cache_dir: corral's cache; :func:`corral.config.default_cache` if ``None``.
    :raise InvalidInput: field ``user_data``: too long, not a cloud-config, not YAML, not a
        mapping, or refused by cloud-init's schema (with cloud-init's own message; the file is
        called ``user-data`` in it).
    :raise HostError: see :func:`cloud_init_tool`.
    :raise ToolError: cloud-init failed in another way (a crash).
    """
    check_user_data_text(text)
    if not is_cloud_config(text):
        raise InvalidInput("user_data", f"a cloud-config begins with {CLOUD_CONFIG_HEADER!r}")
    if not parse_cloud_config(text):
        return
    if not text.startswith(CLOUD_CONFIG_HEADER):
        text = CLOUD_CONFIG_HEADER + text.lstrip()[len(CLOUD_CONFIG_HEADER) :]
    tool = cloud_init_tool(cache_dir)
    with tempfile.TemporaryDirectory(prefix="corral-schema-") as work:
        path = Path(work) / "user-data"
        path.write_text(text, encoding="utf-8")
        proc = tool.run(["schema", "--config-file", str(path)])
    if proc.returncode == 0:
        return
    if proc.stderr.lstrip().startswith("Error:"):
        raise InvalidInput("user_data", _trim(proc.stderr.replace(str(path), "user-data")))
    _raise_for_crash(tool, ["schema", "--config-file", str(path)], proc)


def validate_user_data(text: str, cache_dir: Path | None = None) -> None:
    """Check user-data: a cloud-config with ``cloud-init schema``; other kinds are not checked.

    :param text: the user's user-data.
    :param cache_dir: corral's cache; :func:`corral.config.default_cache` if ``None``.
    :raise InvalidInput: see :func:`validate_cloud_config`.
    :raise HostError: see :func:`cloud_init_tool`.
    :raise ToolError: see :func:`validate_cloud_config`.
    """
    if is_cloud_config(text):
        validate_cloud_config(text, cache_dir)


def net_convert(
    network_config: str,
    output_kind: str,
    distro: str = "debian",
    cache_dir: Path | None = None,
) -> dict[str, str]:
    """Render a network-config as an instance's cloud-init would (``devel net-convert``).

    :param network_config: a NoCloud ``network-config`` (YAML, version 1 or 2).
    :param output_kind: ``eni``, ``netplan``, ``networkd``, ``sysconfig`` or
        ``network-manager``.
    :param distro: the distribution cloud-init renders for (``debian``, ``ubuntu``).
    :param cache_dir: corral's cache; :func:`corral.config.default_cache` if ``None``.
    :return: the files written, path (relative, ``etc/network/interfaces.d/50-cloud-init``)
        -> content.
    :raise InvalidInput: field ``network_config``: cloud-init refused it.
    :raise HostError: see :func:`cloud_init_tool`.
    """
    tool = cloud_init_tool(cache_dir)
    with tempfile.TemporaryDirectory(prefix="corral-net-") as work:
        source = Path(work) / "network-config"
        source.write_text(network_config, encoding="utf-8")
        out = Path(work) / "out"
        args = ["devel", "net-convert", "-p", str(source), "-k", "yaml"]
        args += ["-d", str(out), "-D", distro, "-O", output_kind]
        proc = tool.run(args)
        if proc.returncode != 0:
            if "Traceback" in proc.stderr and "ModuleNotFoundError" in proc.stderr:
                _raise_for_crash(tool, args, proc)
            raise InvalidInput("network_config", _trim(proc.stderr.replace(work, "")))
        return {
            str(path.relative_to(out)): path.read_text(encoding="utf-8")
            for path in sorted(out.rglob("*"))
            if path.is_file()
        }


def _ready(base: Path) -> CloudInitTool | None:
    """The pinned tree, if it is complete."""
    pin = _read_pin(base)
    if pin is None:
        return None
    tree = base / pin["version"]
    try:
        if (tree / _MARKER).read_text().strip() != pin["sha256"]:
            return None
    except OSError:
        return None
    return _tool(pin["version"], tree)


def _tool(version: str, tree: Path) -> CloudInitTool:
    return CloudInitTool(
        version=version,
        root=tree,
        argv=(PYTHON, "-s", str(tree / _ENTRY)),
        env={"PYTHONPATH": str(tree / _SITE)},
    )


def _obtain(base: Path) -> CloudInitTool:
    """Fetch (or re-unpack) the pinned package, or resolve and pin the current one."""
    pin = _read_pin(base)
    debs = base / "debs"
    debs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=".work-") as work_dir:
        work = Path(work_dir)
        if pin is not None:
            deb = debs / pin["filename"]
            if not deb.is_file() or sha256_file(deb) != pin["sha256"]:
                fetched = _apt_download(work, f"{PACKAGE}={pin['version']}")
                if sha256_file(fetched) != pin["sha256"]:
                    raise HostError(
                        f"the pinned {PACKAGE} {pin['version']} could not be fetched unchanged "
                        f"(SHA-256 differs); remove {base / 'pin.json'} to pin the current one"
                    )
                fetched.replace(deb)
        else:
            fetched = _apt_download(work, PACKAGE)
            version = _command(["dpkg-deb", "--field", str(fetched), "Version"]).strip()
            pin = {"version": version, "filename": fetched.name, "sha256": sha256_file(fetched)}
            deb = debs / fetched.name
            fetched.replace(deb)
        tree = work / "tree"
        _command(["dpkg-deb", "-x", str(deb), str(tree)])
        if not (tree / _ENTRY).is_file():
            raise HostError(f"{deb.name} has no /{_ENTRY}: not a cloud-init package corral knows")
        (tree / _MARKER).write_text(pin["sha256"] + "\n")
        final = base / pin["version"]
        if final.exists():
            shutil.rmtree(final)
        tree.rename(final)
    data = {"format": _FORMAT, "package": PACKAGE, **pin}
    write_atomic(base / "pin.json", json.dumps(data, indent=2).encode() + b"\n")
    for old in debs.glob("*.deb"):
        if old.name != pin["filename"]:
            old.unlink(missing_ok=True)
    return _tool(pin["version"], final)


def _read_pin(base: Path) -> dict[str, str] | None:
    try:
        data = json.loads((base / "pin.json").read_text())
        if data.get("format") != _FORMAT:
            return None
        return {key: str(data[key]) for key in ("version", "filename", "sha256")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _apt_download(work: Path, spec: str) -> Path:
    """``apt-get download <spec>`` into a fresh directory; the ``.deb`` file."""
    target = Path(tempfile.mkdtemp(dir=work, prefix="apt-"))
    _command(["apt-get", "download", "-q", spec], cwd=target, what=f"apt-get download {spec}")
    debs = sorted(target.glob("*.deb"))
    if len(debs) != 1:
        raise HostError(f"apt-get download {spec} delivered {len(debs)} files, expected one")
    return debs[0]


def _command(argv: list[str], cwd: Path | None = None, what: str | None = None) -> str:
    """Run a packaging tool; its output, or a :class:`HostError` that says what to do."""
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    except FileNotFoundError as exc:
        raise HostError(
            f"{argv[0]} is not installed: validating cloud-init user-data needs Debian's "
            f"{PACKAGE} package, fetched with apt-get and unpacked with dpkg-deb "
            "(a Debian or Ubuntu host)"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"{what or argv[0]} did not finish within 600 s") from exc
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "no error output"
        hint = (
            "; is the apt package list current? `apt-get update` refreshes it"
            if argv[0] == "apt-get"
            else ""
        )
        raise HostError(
            f"cannot fetch Debian's {PACKAGE} package (needed to validate user-data): "
            f"{what or argv[0]} failed: {last}{hint}"
        ) from ToolError(argv, proc.returncode, proc.stderr)
    return proc.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_dependencies(tool: CloudInitTool) -> None:
    """Raise :class:`HostError` naming the Debian packages of the modules ``python3`` lacks."""
    if tool.root in _checked:
        return
    probe = (
        "import importlib.util, sys\n"
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))\n"
    )
    try:
        proc = subprocess.run(
            [PYTHON, "-s", "-c", probe, *PYTHON_DEPENDENCIES],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise HostError(
            f"{PYTHON} is not installed: cloud-init (which validates user-data) runs on it; "
            f"install python3 {' '.join(PYTHON_DEPENDENCIES.values())}"
        ) from exc
    missing = proc.stdout.split()
    if proc.returncode != 0 or missing:
        packages = " ".join(PYTHON_DEPENDENCIES[m] for m in missing) or "python3"
        raise HostError(
            f"cloud-init (which validates user-data) lacks Python modules on {PYTHON} "
            f"({', '.join(missing) or proc.stderr.strip()}): apt-get install {packages}"
        )
    _checked.add(tool.root)


def _raise_for_crash(
    tool: CloudInitTool, args: Sequence[str], proc: subprocess.CompletedProcess[str]
) -> NoReturn:
    """cloud-init crashed: a missing module is the host's fault, anything else a tool error."""
    match = re.search(r"No module named '([\w.]+)'", proc.stderr)
    if match:
        module = match.group(1).split(".")[0]
        package = PYTHON_DEPENDENCIES.get(module, f"the package that provides {module}")
        raise HostError(
            f"cloud-init (which validates user-data) needs the Python module {module} on "
            f"{PYTHON}: apt-get install {package}"
        )
    raise ToolError([*tool.argv, *args], proc.returncode, proc.stderr)


def _trim(message: str) -> str:
    """cloud-init's error message on one line: without its ``Error:`` heading, each problem
    once (its schema reports some twice); of a traceback, the exception's line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        lines = lines[-1:]
    if lines and lines[0] == "Error:":
        lines = lines[1:]
    text = " ".join(lines) or "cloud-init refused it without a message"
    prefix = "Cloud config schema errors: "
    if text.startswith(prefix):
        problems = re.split(r", (?=[\w.-]+: )", text[len(prefix) :])
        text = prefix + ", ".join(dict.fromkeys(problems))
    return text
