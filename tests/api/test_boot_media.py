"""Booting from a CD-ROM or from the network (``POST /vms`` with ``cdrom`` and ``boot``): the
spec that create builds, the host checks (a readable ISO, the iPXE ROM), admins only for a host
file, and with real QEMU: the ISO in the drive with its boot index, iPXE's banner on the serial
console of a VM that boots from the network.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.access.audit import OK
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, build_spec, check_boot_media
from corral.errors import HostError, InvalidInput
from tests.api.support import API, act, admin_client, audit_entries, state_dir, user_client
from tests.api.test_monitor import make_iso

# -- pure: the spec -----------------------------------------------------------------------------


def test_a_cdrom_boots_first_unless_told_otherwise() -> None:
    spec = build_spec(CreateRequest(name="i1", disk_size="1G", cdrom="/srv/a.iso"), None)
    assert spec.cdrom is not None and spec.cdrom.path == "/srv/a.iso" and spec.cdrom.boot
    kept = build_spec(
        CreateRequest(name="i2", disk_size="1G", cdrom="/srv/a.iso", boot="disk"), None
    )
    assert kept.cdrom is not None and not kept.cdrom.boot
    live = build_spec(CreateRequest(name="i3", cdrom="/srv/live.iso"), None)
    assert live.disks == () and live.cdrom is not None and live.cdrom.boot


def test_network_boot_marks_the_nic() -> None:
    spec = build_spec(CreateRequest(name="p1", disk_size="1G", boot="network"), None)
    assert spec.nics[0].boot and spec.cdrom is not None and spec.cdrom.path is None
    assert not build_spec(CreateRequest(name="p2", disk_size="1G"), None).nics[0].boot


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (CreateRequest(name="b1", disk_size="1G", boot="cdrom"), "boot"),
        (CreateRequest(name="b2", cdrom="relative.iso"), "cdrom.path"),
        (CreateRequest(name="b3"), "spec"),
    ],
)
def test_boot_requests_are_checked_naming_the_field(req: CreateRequest, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_spec(req, None)
    assert caught.value.field == field


def test_host_checks(tmp_path: Path) -> None:
    spec = build_spec(CreateRequest(name="p1", disk_size="1G", boot="network"), None)
    check_boot_media(spec)  # Debian's ipxe-qemu is installed with qemu-system-x86
    with pytest.raises(HostError, match=r"efi-virtio\.rom"):
        check_boot_media(spec, (str(tmp_path),))
    text = tmp_path / "notes.txt"
    text.write_text("not an ISO\n" * 4000)
    with pytest.raises(InvalidInput) as caught:
        check_boot_media(build_spec(CreateRequest(name="c1", cdrom=str(text)), None))
    assert caught.value.field == "cdrom" and "ISO 9660" in caught.value.reason


# -- the endpoint, with real QEMU ----------------------------------------------------------------

USERS = {"olga": ("operator", ["p1"])}


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    with state_dir("bm-", ["p1"], USERS) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


def _qmp(client: TestClient, name: str, execute: str, **arguments: object) -> Any:
    message: dict[str, object] = {"execute": execute, "arguments": arguments}
    answer = client.post(f"{API}/vms/{name}/monitor", json={"qmp": message})
    assert answer.status_code == 200, answer.text
    assert answer.json()["error"] is None, answer.json()
    return answer.json()["return"]


@pytest.mark.tcg
def test_a_vm_created_with_an_iso_has_it_in_its_boot_drive(
    ctx: Corral, api: TestClient, tmp_path: Path
) -> None:
    iso = make_iso(tmp_path / "install.iso", "installer")
    body = {"name": "cd1", "disk_size": "64M", "memory": "128M", "project": "p1"}
    with user_client(ctx, "olga") as olga:
        refused = olga.post(f"{API}/vms", json={**body, "cdrom": str(iso)})
        assert refused.status_code == 403, refused.text
    made = api.post(f"{API}/vms", json={**body, "cdrom": str(iso)})
    assert made.status_code == 201, made.text
    assert act(api, "cd1", "start")["status"] == "success"
    drives = {b["qdev"]: b for b in _qmp(api, "cd1", "query-block") if "qdev" in b}
    cdrom = next(b for q, b in drives.items() if "cdrom0" in q)
    assert cdrom["inserted"]["file"] == str(iso)
    assert cdrom["inserted"]["ro"] is True
    assert _qmp(api, "cd1", "qom-get", path="/machine/peripheral/cdrom0", property="bootindex") == 0
    creates = [e for e in audit_entries(api, "cd1") if e["action"] == "vm.create"]
    assert [e["outcome"] for e in creates] == ["Forbidden", OK]
    assert creates[0]["actor"] == "olga"
    assert creates[-1]["detail"]["cdrom"] == str(iso)


@pytest.mark.tcg
def test_bad_isos_and_boots_answer_422(api: TestClient, tmp_path: Path) -> None:
    text = tmp_path / "plain.txt"
    text.write_text("hello\n")
    bad = api.post(f"{API}/vms", json={"name": "cd2", "disk_size": "64M", "cdrom": str(text)})
    assert bad.status_code == 422 and bad.json()["field"] == "cdrom", bad.text
    boot = api.post(f"{API}/vms", json={"name": "cd3", "disk_size": "64M", "boot": "cdrom"})
    assert boot.status_code == 422 and boot.json()["field"] == "boot", boot.text
    assert api.get(f"{API}/vms/cd2").status_code == 404


@pytest.mark.tcg
def test_a_network_boot_runs_ipxe(ctx: Corral, api: TestClient) -> None:
    made = api.post(
        f"{API}/vms",
        json={"name": "pxe1", "disk_size": "64M", "memory": "128M", "boot": "network"},
    )
    assert made.status_code == 201, made.text
    assert act(api, "pxe1", "start")["status"] == "success"
    with ctx.db.session() as session:
        log = Path(records.load(ctx, session, "pxe1").paths.serial_log)
    deadline = time.monotonic() + 60
    text = ""
    while "iPXE initialising devices" not in text:
        assert time.monotonic() < deadline, f"no iPXE banner on the serial console: {text!r}"
        text = log.read_text(errors="replace") if log.exists() else ""
        time.sleep(0.2)
    assert "Open Source Network Boot Firmware" in text or "iPXE" in text
