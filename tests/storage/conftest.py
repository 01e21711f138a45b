"""Fixtures for the disk-image tests: the real qemu-img and qemu-io, run the plain way.

The tests build their images with the tools directly (not through the code under test), so a
bug in :mod:`corral.qemu.img` cannot hide itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Tool = Callable[..., str]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (qemu-utils)")


@pytest.fixture
def qemu_img() -> Tool:
    """Run qemu-img with the given arguments; return its standard output."""
    _need("qemu-img")
    _need("prlimit")

    def run(*args: str | Path) -> str:
        argv = ["qemu-img", *map(str, args)]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    return run


@pytest.fixture
def qemu_io() -> Tool:
    """Run qemu-io commands on an image: ``qemu_io("qcow2", path, "write 0 1M")``."""
    _need("qemu-io")

    def run(fmt: str, path: str | Path, *commands: str) -> str:
        argv = ["qemu-io", "-f", fmt]
        for command in commands:
            argv += ["-c", command]
        argv.append(str(path))
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    return run


@pytest.fixture
def image_info(qemu_img: Tool) -> Callable[[Path, str], dict[str, Any]]:
    """``qemu-img info`` as a dict, read independently of corral's parser."""

    def info(path: Path, fmt: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(qemu_img("info", "--output=json", "-U", "-f", fmt, path))
        return data

    return info


def sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def file_sha256() -> Callable[[Path], str]:
    """SHA-256 of a file, hex."""
    return sha256
