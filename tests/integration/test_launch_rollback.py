"""A launch that fails half-way leaves nothing: no record, disk, seed, port or process; a port
a launch reserved stays reserved.

QEMU's start is made to fail for one instance (everything before it is real: the clone, the
seed, the port reservation); the launch must then remove every instance it made.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.compute import lifecycle
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.inventory import list_vms
from corral.compute.keys import create_key
from corral.compute.launch import LaunchRequest, launch
from corral.compute.ports import reserved_by_records
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.errors import InvalidInput, LaunchError

pytestmark = [pytest.mark.tcg]


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Corral]:
    root = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
    c = Corral(Home(root))
    ensure_reference(c)
    create_key(c, "k", tmp_path / "k")
    yield c
    for view in list_vms(c, include_inactive=True):
        if view.state == "running":
            lifecycle.destroy(c, view.name)
    c.close()


def test_failed_start_removes_every_instance(ctx: Corral, monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = lifecycle.start
    started: list[str] = []

    def start(c: Corral, name: str, wait: bool = False, timeout: float = 1.0) -> object:
        if name == "f-2":
            raise LaunchError(["qemu-system-x86_64"], 1, ["injected failure"])
        started.append(name)
        return real_start(c, name, wait=wait, timeout=timeout)

    monkeypatch.setattr(lifecycle, "start", start)
    req = LaunchRequest("f", "reference", "t1.nano", "k", count=3, wait=False)
    with pytest.raises(LaunchError, match="injected failure"):
        launch(ctx, req)
    assert started, "the other instances got as far as starting"
    assert list_vms(ctx, include_inactive=True) == []
    assert list((ctx.home.vms).iterdir()) == []
    assert reserved_by_records(ctx) == set()


def test_reserved_port_is_refused_to_others(ctx: Corral) -> None:
    """A launched VM's SSH port stays its own, running or not: another VM cannot take it."""
    (instance,) = launch(ctx, LaunchRequest("p", "reference", "t1.nano", "k", wait=False))
    assert instance.port in reserved_by_records(ctx)
    lifecycle.destroy(ctx, "p")
    with pytest.raises(InvalidInput, match=rf"nics\.0\.forwards: host port tcp/{instance.port}"):
        create(ctx, CreateRequest("q", image="reference", forwards=(f"{instance.port}:22",)))
    assert [v.name for v in list_vms(ctx, include_inactive=True)] == ["p"]
    (second,) = launch(ctx, LaunchRequest("r", "reference", "t1.nano", "k", wait=False))
    assert second.port != instance.port
