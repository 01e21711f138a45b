"""What every step of the reference guest build shares: host tools, files, the recipe, progress.

:func:`run` runs a host tool and turns its failure into a :class:`GuestBuildError` that names
the command and its error output; :func:`sha256_file` and :func:`write_atomic` hash and write
the build's files; :func:`recipe_files` and :func:`recipe_text` read the recipe (the files in
``recipe/``); :data:`EPOCH` is the one file time of the built images; :data:`PHASES` says
where each phase starts in the progress reported to a :data:`ProgressFn`. This module imports
no other builder module: the others build on it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from corral.errors import GuestBuildError, ToolError

#: Every file time in the built images, for reproducible output (2024-01-01T00:00:00Z).
EPOCH = 1_704_067_200

#: Called as ``progress(phase, fraction)``: the phase that starts and the overall progress.
ProgressFn = Callable[[str, float], None]

#: Overall progress at the start of each phase (the fraction passed to ``progress``).
PHASES: Mapping[str, float] = {
    "download": 0.0,
    "kernel": 0.35,
    "initramfs": 0.55,
    "rootfs": 0.7,
    "qcow2": 0.85,
    "done": 1.0,
}

_STDERR_TAIL = 2000


def recipe_files() -> list[tuple[str, bytes]]:
    """The recipe as (name, content) pairs, sorted by name."""
    root = resources.files("corral.guest") / "recipe"
    files = [(entry.name, entry.read_bytes()) for entry in root.iterdir() if entry.is_file()]
    return sorted(files)


def recipe_text(name: str) -> bytes:
    """The content of the recipe file ``name``."""
    return (resources.files("corral.guest") / "recipe" / name).read_bytes()


def run(
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


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's content, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``path`` (mode 0644) through a synced temporary file renamed over it.

    The temporary file is ``.<name>.<random>`` next to ``path``; it is removed on failure.
    """
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
