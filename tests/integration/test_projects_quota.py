"""Projects and quotas at create time: ``create``, ``launch``, image import and key pairs go
into a named project; a create or launch over a quota is refused, naming the quota, and
leaves nothing behind; two concurrent creates never both pass a quota that fits one.

Nothing here boots QEMU: creating only clones disks, and the launch tests that get as far
as starting replace the start with a no-op.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.access import projects, quotas
from corral.access.principal import Principal, Role
from corral.compute import define, lifecycle
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.images import get_image, import_image
from corral.compute.inventory import info, list_vms
from corral.compute.keys import create_key, get_key, import_key_file, list_keys
from corral.compute.launch import LaunchRequest, launch
from corral.compute.reference import REFERENCE, ensure_reference
from corral.config import Home
from corral.errors import NotFound, QuotaExceeded
from corral.store.models import DEFAULT_PROJECT_ID, ImageRow, KeyPairRow, ProjectRow, VmRow
from tests import daemons
from tests.integration.conftest import cli

ADMIN = Principal(name="local:test", role=Role.ADMIN, is_local=True)
MIB = 1024 * 1024


@pytest.fixture
def ctx() -> Iterator[Corral]:
    """A fresh state directory with the reference image and the projects p1 and p2."""
    root = Path(tempfile.mkdtemp(prefix="cq-", dir="/tmp"))
    c = Corral(Home(root))
    ensure_reference(c)
    projects.create_project(c, ADMIN, "p1")
    projects.create_project(c, ADMIN, "p2")
    yield c
    c.close()
    daemons.stop(root)  # the one a CLI verb started
    subprocess.run(["rm", "-rf", str(root)], check=False)


def _project_id(ctx: Corral, name: str) -> str:
    with ctx.db.session() as session:
        row = session.scalars(select(ProjectRow).where(ProjectRow.name == name)).one()
        return row.id


def _vm_rows(ctx: Corral) -> dict[str, str]:
    """Each VM's project id, by name."""
    with ctx.db.session() as session:
        return {r.name: r.project_id for r in session.scalars(select(VmRow))}


def _vm_dirs(ctx: Corral) -> list[str]:
    return sorted(p.name for p in ctx.home.vms.iterdir()) if ctx.home.vms.exists() else []


def _set(ctx: Corral, project: str, **limits: int | None) -> None:
    quotas.set_quota(ctx, ADMIN, project, limits)


# --- create ------------------------------------------------------------------------------


def test_create_goes_into_the_named_project(ctx: Corral) -> None:
    create(ctx, CreateRequest("a", image=REFERENCE, memory="128M", project="p1"))
    create(ctx, CreateRequest("b", image=REFERENCE, memory="128M"))
    assert _vm_rows(ctx) == {"a": _project_id(ctx, "p1"), "b": DEFAULT_PROJECT_ID}
    assert info(ctx, "a").project == "p1"
    assert info(ctx, "b").project == "default"
    assert [v.name for v in list_vms(ctx, include_inactive=True, project="p1")] == ["a"]
    assert [v.project for v in list_vms(ctx, include_inactive=True)] == ["p1", "default"]


def test_create_in_an_unknown_project_is_not_found(ctx: Corral) -> None:
    with pytest.raises(NotFound, match="project 'nope' not found"):
        create(ctx, CreateRequest("a", image=REFERENCE, project="nope"))
    with pytest.raises(NotFound, match="project 'Bad Name' not found"):
        create(ctx, CreateRequest("a", image=REFERENCE, project="Bad Name"))
    with pytest.raises(NotFound, match="project 'nope' not found"):
        list_vms(ctx, project="nope")
    assert _vm_rows(ctx) == {}
    assert _vm_dirs(ctx) == []


@pytest.mark.parametrize(
    ("quota", "limit", "request_"),
    [
        ("instances", 0, CreateRequest("q", image=REFERENCE, memory="128M", project="p1")),
        ("vcpus", 1, CreateRequest("q", image=REFERENCE, vcpus=2, memory="128M", project="p1")),
        ("memory", 256 * MIB, CreateRequest("q", image=REFERENCE, memory="512M", project="p1")),
        ("disk", 64 * MIB, CreateRequest("q", disk_size="65M", memory="128M", project="p1")),
        (
            "disk",
            64 * MIB,
            CreateRequest("q", disk_size="32M", data_disks=("33M",), memory="128M", project="p1"),
        ),
    ],
)
def test_create_over_a_quota_is_refused_and_leaves_nothing(
    ctx: Corral, quota: str, limit: int, request_: CreateRequest
) -> None:
    _set(ctx, "p1", **{quota: limit})
    with pytest.raises(QuotaExceeded, match=f"quota {quota} of project 'p1' exceeded") as caught:
        create(ctx, request_)
    assert caught.value.quota == quota
    assert caught.value.limit == limit
    assert caught.value.status == 403
    assert _vm_rows(ctx) == {}
    assert _vm_dirs(ctx) == []
    # The same VM fits another project, and p1 once the quota is lifted.
    create(ctx, replace(request_, project="p2"))
    quotas.clear_quota(ctx, ADMIN, "p1")
    create(ctx, replace(request_, name="q2"))


def test_clone_counts_its_image_virtual_size(ctx: Corral) -> None:
    """A clone without a size counts its image's virtual size; with one, that size."""
    size = get_image(ctx, REFERENCE).virtual_size
    _set(ctx, "p1", disk=size)
    create(ctx, CreateRequest("a", image=REFERENCE, memory="128M", project="p1"))
    view = quotas.get_quota(ctx, ADMIN, "p1")
    assert view.usage["disk"] == size
    with pytest.raises(QuotaExceeded, match="quota disk"):
        create(ctx, CreateRequest("b", image=REFERENCE, memory="128M", project="p1"))
    _set(ctx, "p1", disk=size + size + MIB)
    create(ctx, CreateRequest("b", image=REFERENCE, disk_size=size + MIB, project="p1"))
    assert quotas.get_quota(ctx, ADMIN, "p1").usage["disk"] == size + size + MIB


def test_refusal_at_insert_removes_the_cloned_disks(
    ctx: Corral, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the early check passed but the atomic one refuses, the clone goes too."""
    _set(ctx, "p1", instances=0)
    monkeypatch.setattr(define, "check_project_quota", lambda *args: None)
    with pytest.raises(QuotaExceeded, match="quota instances"):
        create(ctx, CreateRequest("a", image=REFERENCE, memory="128M", project="p1"))
    assert _vm_rows(ctx) == {}
    assert _vm_dirs(ctx) == []


def test_concurrent_creates_never_both_pass_the_quota(
    ctx: Corral, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both pass the early check (a barrier holds each until the other did); then exactly
    one insert fits the quota of one instance."""
    _set(ctx, "p1", instances=1)
    barrier = threading.Barrier(2, timeout=60)
    real_check = quotas.check_project_quota

    def check_then_wait(*args: Any) -> None:
        real_check(*args)
        barrier.wait()

    monkeypatch.setattr(define, "check_project_quota", check_then_wait)
    outcomes: dict[str, BaseException | None] = {}

    def make(name: str) -> None:
        try:
            # Blank disks: no image lock, which would serialise the two creates.
            create(ctx, CreateRequest(name, disk_size="16M", memory="128M", project="p1"))
            outcomes[name] = None
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=make, args=(n,)) for n in ("c1", "c2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [e for e in outcomes.values() if e is not None]
    assert len(outcomes) == 2
    assert len(errors) == 1, outcomes
    assert isinstance(errors[0], QuotaExceeded) and errors[0].quota == "instances"
    assert len(_vm_rows(ctx)) == 1
    assert _vm_dirs(ctx) == sorted(_vm_rows(ctx))


def test_image_of_another_project_is_not_found(ctx: Corral, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * MIB)
    import_image(ctx, "own", raw, "raw", project="p1")
    with ctx.db.session() as session:
        row = session.scalars(select(ImageRow).where(ImageRow.name == "own")).one()
        assert row.project_id == _project_id(ctx, "p1")
    assert get_image(ctx, "own").project == "p1"
    assert get_image(ctx, REFERENCE).project == "default"
    create(ctx, CreateRequest("a", image="own", memory="128M", firmware="bios", project="p1"))
    with pytest.raises(NotFound, match="image 'own' not found"):
        create(ctx, CreateRequest("b", image="own", memory="128M", project="p2"))
    with pytest.raises(NotFound, match="image 'own' not found"):
        create(ctx, CreateRequest("b", image="own", memory="128M"))
    # The images of default are shared with every project.
    create(ctx, CreateRequest("c", image=REFERENCE, memory="128M", project="p2"))
    assert _vm_rows(ctx) == {"a": _project_id(ctx, "p1"), "c": _project_id(ctx, "p2")}


def test_import_into_an_unknown_project_leaves_nothing(ctx: Corral, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * MIB)
    with pytest.raises(NotFound, match="project 'nope'"):
        import_image(ctx, "img", raw, "raw", project="nope")
    assert not ctx.home.image_dir("img").exists()


# --- key pairs ---------------------------------------------------------------------------


def test_keys_go_into_the_named_project(ctx: Corral, tmp_path: Path) -> None:
    create_key(ctx, "k1", tmp_path / "k1", project="p1")
    import_key_file(ctx, "k2", tmp_path / "k1.pub", project="p2")
    create_key(ctx, "k3", tmp_path / "k3")
    with ctx.db.session() as session:
        owners = {r.name: r.project_id for r in session.scalars(select(KeyPairRow))}
    assert owners == {
        "k1": _project_id(ctx, "p1"),
        "k2": _project_id(ctx, "p2"),
        "k3": DEFAULT_PROJECT_ID,
    }
    assert [(v.name, v.project) for v in list_keys(ctx)] == [
        ("k1", "p1"),
        ("k2", "p2"),
        ("k3", "default"),
    ]
    assert get_key(ctx, "k1").project == "p1"
    with pytest.raises(NotFound, match="project 'nope'"):
        create_key(ctx, "k4", tmp_path / "k4", project="nope")
    assert not (tmp_path / "k4").exists()
    with pytest.raises(NotFound, match="project 'nope'"):
        import_key_file(ctx, "k4", tmp_path / "k1.pub", project="nope")


# --- launch ------------------------------------------------------------------------------


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Instances are made but QEMU is not started; the names that would have started."""
    started: list[str] = []

    def start(c: Corral, name: str, wait: bool = False, timeout: float = 1.0) -> None:
        del c, wait, timeout
        started.append(name)

    monkeypatch.setattr(lifecycle, "start", start)
    return started


def test_launch_over_the_instance_quota_makes_nothing(
    ctx: Corral, tmp_path: Path, no_start: list[str]
) -> None:
    create_key(ctx, "k", tmp_path / "k", project="p1")
    _set(ctx, "p1", instances=2)
    req = LaunchRequest("f", REFERENCE, "t1.nano", "k", count=3, wait=False, project="p1")
    with pytest.raises(QuotaExceeded, match="quota instances of project 'p1'") as caught:
        launch(ctx, req)
    assert caught.value.requested == 3
    assert no_start == []
    assert _vm_rows(ctx) == {}
    assert _vm_dirs(ctx) == []


@pytest.mark.parametrize("quota", ["vcpus", "memory", "disk"])
def test_launch_checks_every_quota_for_all_instances(
    ctx: Corral, tmp_path: Path, no_start: list[str], quota: str
) -> None:
    from corral.compute.types import get_type

    itype = get_type(ctx.home, "t1.nano")
    per_instance = {"vcpus": itype.vcpus, "memory": itype.memory, "disk": itype.disk}[quota]
    create_key(ctx, "k", tmp_path / "k", project="p1")
    _set(ctx, "p1", **{quota: 2 * per_instance})  # room for two, not three
    req = LaunchRequest("f", REFERENCE, "t1.nano", "k", count=3, wait=False, project="p1")
    with pytest.raises(QuotaExceeded, match=f"quota {quota} of project 'p1'"):
        launch(ctx, req)
    assert no_start == [] and _vm_rows(ctx) == {}
    launch(ctx, LaunchRequest("g", REFERENCE, "t1.nano", "k", count=2, wait=False, project="p1"))
    assert sorted(no_start) == ["g-1", "g-2"]
    assert _vm_rows(ctx) == dict.fromkeys(["g-1", "g-2"], _project_id(ctx, "p1"))


def test_launch_into_a_project(ctx: Corral, tmp_path: Path, no_start: list[str]) -> None:
    create_key(ctx, "k", tmp_path / "k", project="p1")
    (instance,) = launch(
        ctx, LaunchRequest("l", REFERENCE, "t1.nano", "k", wait=False, project="p1")
    )
    assert no_start == ["l"]
    assert _vm_rows(ctx) == {"l": _project_id(ctx, "p1")}
    assert info(ctx, "l").project == "p1"
    assert instance.name == "l"


def test_launch_needs_the_projects_own_key_pair(
    ctx: Corral, tmp_path: Path, no_start: list[str]
) -> None:
    create_key(ctx, "k", tmp_path / "k")  # in default
    with pytest.raises(NotFound, match="key pair 'k' not found"):
        launch(ctx, LaunchRequest("l", REFERENCE, "t1.nano", "k", wait=False, project="p1"))
    with pytest.raises(NotFound, match="project 'nope' not found"):
        launch(ctx, LaunchRequest("l", REFERENCE, "t1.nano", "k", wait=False, project="nope"))
    assert no_start == [] and _vm_rows(ctx) == {}


def test_launch_race_is_refused_at_insert_and_rolled_back(
    ctx: Corral, tmp_path: Path, no_start: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launch whose plan passed, but whose instances no longer fit when they are recorded
    (another create took the room), fails and removes every instance it made."""
    from corral.access import quotas as quota_module

    create_key(ctx, "k", tmp_path / "k", project="p1")
    _set(ctx, "p1", instances=2)
    monkeypatch.setattr(quota_module, "check_project_quota", lambda *args: None)
    monkeypatch.setattr(define, "check_project_quota", lambda *args: None)
    req = LaunchRequest("f", REFERENCE, "t1.nano", "k", count=3, wait=False, project="p1")
    with pytest.raises(QuotaExceeded, match="quota instances"):
        launch(ctx, req)
    assert _vm_rows(ctx) == {}
    assert _vm_dirs(ctx) == []


# --- the real command --------------------------------------------------------------------


def _cli(ctx: Corral, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command on ``ctx``'s state directory (its daemon started on demand)."""
    return cli(ctx.home.root, *args, timeout=120)


def test_cli_create_in_a_project_and_quota_refusal(ctx: Corral) -> None:
    done = _cli(ctx, "create", "a", "--image", REFERENCE, "--memory", "128M", "--project", "p1")
    assert done.returncode == 0, done.stderr
    shown = json.loads(_cli(ctx, "info", "a", "--json").stdout)
    assert shown["project"] == "p1"
    listed = json.loads(_cli(ctx, "list", "--all", "--project", "p1", "--json").stdout)
    assert [v["name"] for v in listed] == ["a"]
    assert json.loads(_cli(ctx, "list", "--all", "--project", "p2", "--json").stdout) == []
    assert "p1" in _cli(ctx, "info", "a").stdout

    assert _cli(ctx, "project", "quota", "p1", "--instances", "1").returncode == 0
    refused = _cli(ctx, "create", "b", "--image", REFERENCE, "--project", "p1")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "quota instances of project 'p1' exceeded" in lines[0]
    assert "b" not in _vm_rows(ctx)

    unknown = _cli(ctx, "create", "c", "--image", REFERENCE, "--project", "nope")
    assert unknown.returncode == 2
    assert "project 'nope' not found" in unknown.stderr


def test_cli_update_grows_within_the_quota(ctx: Corral) -> None:
    made = _cli(ctx, "create", "a", "--image", REFERENCE, "--memory", "128M", "--project", "p1")
    assert made.returncode == 0, made.stderr
    _set(ctx, "p1", vcpus=2, memory=256 * MIB)
    grown = _cli(ctx, "update", "a", "--vcpus", "2", "--memory", "256M")
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout.strip() == "VM a updated (2 vCPU, 256 MiB)"
    refused = _cli(ctx, "update", "a", "--vcpus", "3")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "quota vcpus of project 'p1' exceeded" in lines[0]
    shown = json.loads(_cli(ctx, "info", "a", "--json").stdout)
    assert (shown["vcpus"], shown["memory"]) == (2, 256 * MIB)
    assert quotas.get_quota(ctx, ADMIN, "p1").usage["vcpus"] == 2


def test_cli_key_and_image_in_a_project(ctx: Corral, tmp_path: Path) -> None:
    done = _cli(ctx, "key", "create", "k", "--out", str(tmp_path / "k"), "--project", "p1")
    assert done.returncode == 0, done.stderr
    assert json.loads(_cli(ctx, "key", "show", "k", "--json").stdout)["project"] == "p1"
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * MIB)
    done = _cli(ctx, "image", "import", "own", str(raw), "--format", "raw", "--project", "p2")
    assert done.returncode == 0, done.stderr
    assert json.loads(_cli(ctx, "image", "info", "own", "--json").stdout)["project"] == "p2"
    refused = _cli(ctx, "image", "import", "other", str(raw), "-f", "raw", "--project", "nope")
    assert refused.returncode == 2 and "project 'nope' not found" in refused.stderr
