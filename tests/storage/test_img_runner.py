"""corral.qemu.runner and corral.qemu.img's operations against the real qemu-img."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.errors import ToolError
from corral.qemu import img, runner
from corral.units import GiB, MiB

Tool = Callable[..., str]


def _children() -> set[int]:
    """PIDs of this process's live children (Linux)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


def test_runner_applies_limits_and_environment(qemu_img: Tool) -> None:
    limits = runner.Limits(address_space=GiB, cpu_seconds=30, timeout=30)
    done = runner.run(
        ["sh", "-c", "ulimit -v; ulimit -t; ulimit -c; echo $MALLOC_ARENA_MAX"], limits
    )
    assert done.stdout.split() == [str(GiB // 1024), "30", "0", "2"]


def test_runner_failure_carries_argv_status_and_stderr(qemu_img: Tool) -> None:
    argv = ["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3"]
    with pytest.raises(ToolError) as caught:
        runner.run(argv, img.INSPECT_LIMITS)
    assert caught.value.argv == tuple(argv)
    assert caught.value.exitcode == 3
    assert "first" in caught.value.stderr
    assert str(caught.value) == "sh failed with status 3: the reason"


def test_runner_names_death_by_cpu_limit(qemu_img: Tool) -> None:
    limits = runner.Limits(address_space=GiB, cpu_seconds=1, timeout=60)
    with pytest.raises(ToolError, match="CPU time limit of 1 s"):
        runner.run(["sh", "-c", "while :; do :; done"], limits)


def test_runner_kills_at_the_timeout(qemu_img: Tool) -> None:
    limits = runner.Limits(address_space=GiB, cpu_seconds=30, timeout=0)
    before = _children()
    with pytest.raises(ToolError, match="no result within 0 s") as caught:
        runner.run(["sh", "-c", "read line"], limits)
    assert caught.value.exitcode == -9
    assert _children() <= before


def test_info_of_qcow2_overlay(
    tmp_path: Path, qemu_img: Tool, image_info: Callable[[Path, str], dict[str, Any]]
) -> None:
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", base, str(GiB))
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
    info = img.info(overlay, "qcow2")
    assert info.format == "qcow2"
    assert info.virtual_size == GiB
    assert info.backing_filename == str(base)
    assert info.backing_format == "qcow2"
    assert info.cluster_size == 65536
    assert info.actual_size == image_info(overlay, "qcow2")["actual-size"]


def test_info_never_guesses_the_format(tmp_path: Path, qemu_img: Tool) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, str(GiB))
    as_raw = img.info(base, "raw")
    assert as_raw.format == "raw"
    assert as_raw.virtual_size == -(-base.stat().st_size // 512) * 512
    with pytest.raises(ToolError) as caught:
        img.info(base, "vmdk")
    assert "-f" in caught.value.argv
    assert "vmdk" in caught.value.argv


def test_relative_names_are_files_not_protocols(
    tmp_path: Path, qemu_img: Tool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("json:{}", "-U", "nbd:localhost:1"):
        with (tmp_path / name).open("wb") as file:
            file.truncate(MiB)
        assert img.info(name, "raw").virtual_size == MiB


def test_check_results(tmp_path: Path, qemu_img: Tool) -> None:
    qcow2 = tmp_path / "a.qcow2"
    raw = tmp_path / "a.raw"
    qemu_img("create", "-f", "qcow2", qcow2, "64M")
    qemu_img("create", "-f", "raw", raw, "64M")
    assert img.check(qcow2, "qcow2").clean
    assert img.check(qcow2, "qcow2").supported
    assert not img.check(raw, "raw").supported


def test_create_overlay_resize_measure(tmp_path: Path, qemu_img: Tool) -> None:
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "o.qcow2"
    img.create(base, "qcow2", GiB)
    img.create_overlay(overlay, base, "qcow2", 2 * GiB)
    info = img.info(overlay, "qcow2")
    assert (info.virtual_size, info.backing_filename) == (2 * GiB, str(base))
    img.resize(overlay, "qcow2", 3 * GiB)
    assert img.info(overlay, "qcow2").virtual_size == 3 * GiB
    with pytest.raises(ToolError):
        img.resize(overlay, "qcow2", GiB)
    assert img.measure(base, "qcow2").required < MiB


def test_convert_reports_progress_up_to_100(tmp_path: Path, qemu_img: Tool, qemu_io: Tool) -> None:
    src = tmp_path / "src.raw"
    dst = tmp_path / "dst.qcow2"
    qemu_img("create", "-f", "raw", src, "64M")
    qemu_io("raw", src, "write -P 0x5a 0 32M")
    seen: list[float] = []
    img.convert(src, "raw", dst, "qcow2", seen.append)
    assert seen[-1] == 1.0
    assert seen == sorted(seen)
    assert len(seen) >= 2
    assert img.info(dst, "qcow2").virtual_size == 64 * MiB
    qemu_img("compare", "-f", "raw", "-F", "qcow2", src, dst)


def test_interrupted_convert_kills_qemu_img(tmp_path: Path, qemu_img: Tool) -> None:
    src = tmp_path / "src.raw"
    qemu_img("create", "-f", "raw", src, "64M")
    before = _children()

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        img.convert(src, "raw", tmp_path / "dst.qcow2", "qcow2", interrupt)
    assert _children() <= before


def test_pass_fds_lets_qemu_img_read_an_open_file(tmp_path: Path, qemu_img: Tool) -> None:
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", path, "5M")
    fd = os.open(path, os.O_RDONLY)
    try:
        path.rename(tmp_path / "moved.qcow2")
        info = img.info(f"/proc/self/fd/{fd}", "qcow2", pass_fds=(fd,))
    finally:
        os.close(fd)
    assert info.virtual_size == 5 * MiB
