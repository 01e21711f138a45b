"""Fixtures for the NoCloud seed tests: the real ISO readers and Debian's real cloud-init.

cloud-init is fetched into corral's own cache on first use (``apt-get download``), so the
first run needs the Debian archive and later runs are offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.cloudinit.schema import CloudInitTool, cloud_init_tool
from corral.config import default_cache

Tool = Callable[..., str]

ED25519 = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq5v0t6Tq3bW2nY3l2bq7Vh1oE7yJ3q9xk1mN2pQ4rS me@laptop"
)
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 ops@bastion"


def _tool(name: str, package: str) -> Tool:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed ({package}; scripts/setup installs it)")

    def run(*args: str | Path) -> str:
        proc = subprocess.run([path, *map(str, args)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{name} {args} failed: {proc.stderr}"
        return proc.stdout

    return run


@pytest.fixture
def isoinfo() -> Tool:
    """Run ``isoinfo`` (genisoimage); return its standard output."""
    return _tool("isoinfo", "genisoimage")


@pytest.fixture
def xorriso() -> Tool:
    """Run ``xorriso``; return its standard output."""
    return _tool("xorriso", "xorriso")


@pytest.fixture
def blkid() -> Tool:
    """Run ``blkid``; return its standard output."""
    return _tool("blkid", "util-linux")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """corral's own cache, where cloud-init is unpacked (shared with the CLI)."""
    return default_cache()


@pytest.fixture(scope="session")
def cloud_init(cache_dir: Path) -> CloudInitTool:
    """Debian's cloud-init, unpacked in the cache; a ``HostError`` fails the tests."""
    if shutil.which("apt-get") is None:
        pytest.skip("not a Debian/Ubuntu host: corral fetches cloud-init with apt-get")
    started = time.monotonic()
    tool = cloud_init_tool(cache_dir)
    print(f"\ncloud-init {tool.version} ready in {time.monotonic() - started:.2f} s")
    return tool
