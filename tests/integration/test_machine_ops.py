"""Snapshots, volumes, the monitor, the CD-ROM and clones on a running reference guest,
through the real ``corral`` command and its daemon: the sequence a user types, as written."""

from __future__ import annotations

import json

import pytest

from tests.api.test_monitor import make_iso
from tests.integration.test_launch import User, user  # noqa: F401 (a fixture)

pytestmark = pytest.mark.tcg


def test_acceptance_on_a_running_guest(user: User) -> None:  # noqa: F811
    user.ok("key", "create", "k1")
    user.ok("launch", "demo1", "--image", "reference", "--type", "t1.micro", "--key", "k1")
    user.ok("ssh", "demo1", "--", "sh", "-c", "'echo before > /root/mark; sync'")

    user.ok("snapshot", "create", "demo1", "s1")
    user.ok("snapshot", "create", "demo1", "s2", "--memory")
    tree = user.ok("snapshot", "list", "demo1")
    assert "s1" in tree and "s2" in tree
    snaps = {s["name"]: s for s in json.loads(user.ok("snapshot", "list", "demo1", "--json"))}
    assert snaps["s2"]["kind"] == "memory" and snaps["s1"]["kind"] == "disk"
    plan = user.ok("snapshot", "revert", "demo1", "s1", "--dry-run")
    assert "s1" in plan
    assert json.loads(user.ok("info", "demo1", "--json"))["state"] == "running"  # a preview
    user.ok("snapshot", "delete", "demo1", "s1")
    names = [s["name"] for s in json.loads(user.ok("snapshot", "list", "demo1", "--json"))]
    assert names == ["s2"]

    user.ok("volume", "create", "v1", "--size", "1G")
    user.ok("volume", "attach", "v1", "demo1")
    assert json.loads(user.ok("volume", "info", "v1", "--json"))["attached_to"] == "demo1"
    user.ok("volume", "detach", "v1")
    assert json.loads(user.ok("volume", "info", "v1", "--json"))["attached_to"] is None

    assert user.ok("monitor", "demo1", "--hmp", "info status").strip() == "VM status: running"

    iso = make_iso(user.root / "some.iso", "hello\n")
    user.ok("cdrom", "insert", "demo1", str(iso))
    blocks = json.loads(user.ok("monitor", "demo1", "--qmp", "query-block"))
    tray = next(b for b in blocks if b.get("qdev") == "cdrom0")
    assert tray["inserted"]["file"] == str(iso)
    user.ok("cdrom", "eject", "demo1")

    user.ok("clone", "demo1", "demo2", "--linked")
    source = json.loads(user.ok("info", "demo1", "--json"))
    clone = json.loads(user.ok("info", "demo2", "--json"))
    assert source["state"] == "running"
    assert clone["state"] in ("defined", "shutoff") and clone["uuid"] != source["uuid"]
    user.ok("start", "demo2", "--wait")
    # The clone has the file the source wrote before it was frozen.
    assert user.ok("ssh", "demo2", "--", "cat", "/root/mark").strip() == "before"
