"""The spool of uploads: new files are private and held; what no one holds is swept."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from corral.errors import HostError, InvalidInput
from corral.storage import uploads


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_new_upload_is_private_and_release_removes_it(tmp_path: Path) -> None:
    path = uploads.new_upload(tmp_path)
    assert path.parent == tmp_path / uploads.SPOOL_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.name.startswith(f"{os.getpid()}-") and path in uploads.held()
    uploads.release(path)
    assert not path.exists() and path not in uploads.held()


def test_new_upload_sweeps_what_no_one_holds(tmp_path: Path) -> None:
    held = uploads.new_upload(tmp_path)
    spool = held.parent
    gone_daemon = spool / f"{dead_pid()}-abc.part"
    dropped = spool / f"{os.getpid()}-dropped.part"  # ours, no longer held (a cancelled task)
    alive_other = spool / "1-other.part"  # pid 1 runs: another daemon's upload in progress
    odd = spool / "junk"
    for path in (gone_daemon, dropped, alive_other, odd):
        path.write_bytes(b"x")
    fresh = uploads.new_upload(tmp_path)
    assert sorted(spool.iterdir()) == sorted([held, fresh, alive_other])
    uploads.release(held)
    uploads.release(fresh)


def test_check_size(tmp_path: Path) -> None:
    uploads.check_size(tmp_path, None)
    uploads.check_size(tmp_path, 1024, limit=1024)
    with pytest.raises(InvalidInput) as refused:
        uploads.check_size(tmp_path, 1025, limit=1024)
    assert refused.value.field == "file" and "1 KiB" in refused.value.reason
    with pytest.raises(HostError, match="not enough space"):
        uploads.check_size(tmp_path, 1 << 60, limit=1 << 62)
