"""USB devices over the API on VMs that are not running: add, list, remove; what is refused
and why; the volume of a usb-storage device recorded as attached; the audit log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.usb import check_kind, plan_add, plan_remove
from corral.errors import Conflict, InvalidInput, NotFound
from corral.spec.vm import UsbDeviceSpec, VmSpec
from corral.store.models import VmRow, VolumeRow
from tests.api.support import API, admin_client, audit_entries, state_dir, user_client


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
    assert host.status_code == 422 and host.json()["field"] == "device"
    assert "not supported on this host" in host.json()["message"]
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
