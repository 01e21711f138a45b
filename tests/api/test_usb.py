"""USB devices over the API on VMs that are not running: add, list, remove; what is refused
and why; the volume of a usb-storage device recorded as attached; the audit log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.settings import SETTINGS_FILE, load_settings
from corral.compute.usb import (
    check_host_allowed,
    check_host_devices,
    check_kind,
    parse_host_id,
    plan_add,
    plan_remove,
)
from corral.errors import Conflict, Forbidden, InvalidInput, NotFound
from corral.host.usb import read_devices
from corral.spec.vm import UsbDeviceSpec, VmSpec
from corral.store.models import VmRow, VolumeRow
from tests.api.support import API, act, admin_client, audit_entries, state_dir, user_client


@dataclass
class World:
    ctx: Corral
    alice: TestClient
    bob: TestClient
    local: TestClient


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = {"alice": ("operator", ["p1"]), "bob": ("operator", ["p2"])}
    with state_dir("usb-", ["p1", "p2"], users) as ctx:
        create(ctx, CreateRequest(name="u1", image="reference", memory="256M", project="p1"))
        with (
            admin_client(ctx) as local,
            user_client(ctx, "alice") as alice,
            user_client(ctx, "bob") as bob,
        ):
            yield World(ctx, alice, bob, local)


def _spec(ctx: Corral, name: str) -> VmSpec:
    with ctx.db.session() as session:
        row = session.scalars(select(VmRow).where(VmRow.name == name)).one()
        return VmSpec.model_validate_json(row.spec)


def test_add_list_remove_tablet(world: World) -> None:
    added = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-tablet"})
    assert added.status_code == 201, added.text
    usb = added.json()
    assert re.fullmatch(r"usb-tablet-[0-9a-f]{8}", usb["id"]) and usb["volume"] is None
    assert [u.id for u in _spec(world.ctx, "u1").usb] == [usb["id"]]
    listed = world.alice.get(f"{API}/vms/u1/usb").json()
    assert listed == [usb]
    gone = world.alice.delete(f"{API}/vms/u1/usb/{usb['id']}")
    assert gone.status_code == 200 and gone.json() == usb
    assert _spec(world.ctx, "u1").usb == ()
    actions = [(e["action"], e["outcome"]) for e in audit_entries(world.local, "u1")]
    assert ("vm.usb.add", "ok") in actions and ("vm.usb.remove", "ok") in actions


def test_refusals_name_the_field(world: World) -> None:
    host = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-host"})
    assert host.status_code == 422 and host.json()["field"] == "host"
    odd = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-mouse"})
    assert odd.status_code == 422 and odd.json()["field"] == "device"
    bare = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-storage"})
    assert bare.status_code == 422 and bare.json()["field"] == "volume"
    extra = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-kbd", "volume": "x"})
    assert extra.status_code == 422 and extra.json()["field"] == "volume"
    missing = world.alice.delete(f"{API}/vms/u1/usb/usb-kbd-00000000")
    assert missing.status_code == 404
    refusals = [e for e in audit_entries(world.local, "u1") if e["outcome"] != "ok"]
    assert any(e["action"] == "vm.usb.add" for e in refusals)


def test_other_projects_vm_is_not_found(world: World) -> None:
    assert world.bob.get(f"{API}/vms/u1/usb").status_code == 404
    assert world.bob.post(f"{API}/vms/u1/usb", json={"device": "usb-kbd"}).status_code == 404
    assert _spec(world.ctx, "u1").usb == ()


def test_storage_attaches_its_volume(world: World) -> None:
    body = {"name": "stick", "size": "16M", "project": "p1"}
    assert world.alice.post(f"{API}/volumes", json=body).status_code in (200, 201)
    other = {"name": "theirs", "size": "16M", "project": "p2"}
    assert world.bob.post(f"{API}/volumes", json=other).status_code in (200, 201)
    foreign = world.alice.post(
        f"{API}/vms/u1/usb", json={"device": "usb-storage", "volume": "theirs"}
    )
    assert foreign.status_code == 404  # alice does not see project p2's volume
    added = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-storage", "volume": "stick"})
    assert added.status_code == 201, added.text
    usb = added.json()
    assert re.fullmatch(r"vol-[0-9a-f]{16}", usb["id"]) and usb["volume"] == "stick"
    with world.ctx.db.session() as session:
        vol = session.scalars(select(VolumeRow).where(VolumeRow.name == "stick")).one()
        vm_id = session.scalars(select(VmRow.id).where(VmRow.name == "u1")).one()
        assert vol.attached_to == vm_id
    again = world.alice.post(f"{API}/vms/u1/usb", json={"device": "usb-storage", "volume": "stick"})
    assert again.status_code == 409
    assert world.alice.delete(f"{API}/vms/u1/usb/{usb['id']}").status_code == 200
    with world.ctx.db.session() as session:
        vol = session.scalars(select(VolumeRow).where(VolumeRow.name == "stick")).one()
        assert vol.attached_to is None
    assert _spec(world.ctx, "u1").usb == ()


def test_pure_rules() -> None:
    spec = VmSpec(name="p", boot={"kind": "kernel", "kernel": "/k"})
    tablet = UsbDeviceSpec(id="usb-tablet-00000001", device="usb-tablet")
    added = plan_add(spec, tablet)
    assert added.usb == (tablet,)
    with pytest.raises(Conflict):
        plan_add(added, tablet)
    micro = spec.model_copy(update={"machine": "microvm"})
    with pytest.raises(InvalidInput):
        plan_add(micro, tablet)
    full = added
    for n in range(2, 5):
        full = plan_add(full, UsbDeviceSpec(id=f"usb-kbd-0000000{n}", device="usb-kbd"))
    with pytest.raises(InvalidInput) as ports:
        plan_add(full, UsbDeviceSpec(id="usb-kbd-00000009", device="usb-kbd"))
    assert ports.value.field == "device"
    assert plan_remove(added, tablet.id) == (spec, tablet)
    with pytest.raises(NotFound):
        plan_remove(spec, tablet.id)
    with pytest.raises(InvalidInput):
        check_kind("usb-host", None)
    assert check_kind("usb-host", None, "046d:c52b") == "usb-host"
    with pytest.raises(InvalidInput) as extra:
        check_kind("usb-kbd", None, "046d:c52b")
    assert extra.value.field == "host"


# -- host USB passthrough ---------------------------------------------------------------------


def _allow(ctx: Corral, *ids: str) -> None:
    quoted = ", ".join(f'"{i}"' for i in ids)
    (ctx.home.root / SETTINGS_FILE).write_text(f"[usb]\nhost_allow = [{quoted}]\n")


def test_host_passthrough_is_for_admins_and_allowed_devices(world: World) -> None:
    _allow(world.ctx, "046d:c52b")
    url = f"{API}/vms/u1/usb"
    operator = world.alice.post(url, json={"device": "usb-host", "host": "046d:c52b"})
    assert operator.status_code == 403, operator.text
    assert "admins only" in operator.json()["message"]
    for bad in ("046D:C52B", "46d:c52b", "046d-c52b", "046d:c52b,x=1"):
        odd = world.local.post(url, json={"device": "usb-host", "host": bad})
        assert odd.status_code == 422 and odd.json()["field"] == "host", bad
    other = world.local.post(url, json={"device": "usb-host", "host": "0781:5583"})
    assert other.status_code == 422 and other.json()["field"] == "host"
    assert "host_allow" in other.json()["message"] and SETTINGS_FILE in other.json()["message"]
    assert _spec(world.ctx, "u1").usb == ()

    added = world.local.post(url, json={"device": "usb-host", "host": "046d:c52b"})
    assert added.status_code == 201, added.text
    usb = added.json()
    assert re.fullmatch(r"usb-host-[0-9a-f]{8}", usb["id"]) and usb["host"] == "046d:c52b"
    (device,) = _spec(world.ctx, "u1").usb
    assert (device.vendorid, device.productid) == (0x046D, 0xC52B)
    twice = world.local.post(url, json={"device": "usb-host", "host": "046d:c52b"})
    assert twice.status_code == 409
    assert world.alice.get(url).json() == [usb]  # operators see it, and may remove it
    assert world.alice.delete(f"{url}/{usb['id']}").status_code == 200
    refusals = [e for e in audit_entries(world.local, "u1") if e["action"] == "vm.usb.add"]
    assert any(e["outcome"] != "ok" and e["detail"].get("host") for e in refusals)


def test_a_start_checks_the_allow_list_again(world: World) -> None:
    _allow(world.ctx, "046d:c52b")
    url = f"{API}/vms/u1/usb"
    added = world.local.post(url, json={"device": "usb-host", "host": "046d:c52b"})
    assert added.status_code == 201, added.text
    _allow(world.ctx)  # the host's administrator takes it off the list
    started = act(world.local, "u1", "start")
    assert started["status"] == "error", started
    assert "host_allow" in str(started)
    assert world.local.get(f"{API}/vms/u1").json()["state"] != "running"
    assert world.local.delete(f"{url}/{added.json()['id']}").status_code == 200


def test_host_usb_listing_is_for_admins(world: World) -> None:
    listed = world.local.get(f"{API}/host/usb")
    assert listed.status_code == 200 and isinstance(listed.json(), list)
    assert world.alice.get(f"{API}/host/usb").status_code == 403


def test_settings_name_the_file_and_key(world: World) -> None:
    path = world.ctx.home.root / SETTINGS_FILE
    path.write_text('[usb]\nhost_allow = ["046D:C52B"]\n')
    try:
        with pytest.raises(InvalidInput) as bad:
            load_settings(world.ctx.home)
        assert bad.value.field == f"{path}: usb.host_allow"
        assert "046D:C52B" in bad.value.reason
    finally:
        path.unlink()
    assert load_settings(world.ctx.home).usb.host_allow == ()


def test_host_rules_pure() -> None:
    assert parse_host_id("046d:c52b") == (0x046D, 0xC52B)
    with pytest.raises(InvalidInput):
        parse_host_id("046d:c52b\n")
    spec = VmSpec(
        name="p",
        boot={"kind": "kernel", "kernel": "/k"},
        usb=[{"id": "usb-host-00000001", "device": "usb-host", "vendorid": 1, "productid": 2}],
    )
    check_host_devices(spec, ("0001:0002",), "corral.toml")
    with pytest.raises(InvalidInput) as refused:
        check_host_devices(spec, (), "/x/corral.toml")
    assert refused.value.field == "usb" and "/x/corral.toml" in refused.value.reason
    with pytest.raises(ValueError):
        UsbDeviceSpec(id="usb-host-00000001", device="usb-host", vendorid=1)
    with pytest.raises(ValueError):
        UsbDeviceSpec(id="usb-kbd-00000001", device="usb-kbd", vendorid=1, productid=2)


def test_forbidden_names_the_rule() -> None:
    from corral.access.principal import Principal, Role

    operator = Principal(name="alice", role=Role.OPERATOR, project_ids=frozenset())
    with pytest.raises(Forbidden, match="admins only"):
        check_host_allowed(operator, "046d:c52b", ("046d:c52b",), "corral.toml")


def test_sysfs_reader(tmp_path: Path) -> None:
    def entry(name: str, **files: str) -> None:
        (tmp_path / name).mkdir()
        for key, text in files.items():
            (tmp_path / name / key).write_text(text + "\n")

    entry("usb1", idVendor="1d6b", idProduct="0002", product="xHCI Host Controller")
    entry("1-1", idVendor="046d", idProduct="c52b", manufacturer="Logitech", product="Receiver")
    entry("1-1:1.0", bInterfaceClass="03")
    entry("1-2", idVendor="zzzz", idProduct="0001")
    devices = read_devices(tmp_path)
    assert [(d.address, d.usb_id) for d in devices] == [("1-1", "046d:c52b"), ("usb1", "1d6b:0002")]
    assert devices[0].manufacturer == "Logitech" and devices[0].product == "Receiver"
    assert read_devices(tmp_path / "absent") == []
