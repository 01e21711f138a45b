"""The nodes and device of an attached volume: the same on the command line and in hotplug."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from tests.unit.test_argv import build, make_paths, make_spec

from corral.compute.state import VmState
from corral.compute.volume_attach import plan_mode
from corral.errors import Conflict, StateError
from corral.qemu.paths import ImageLayer
from corral.qemu.volume_nodes import device_id, plan_plug

VOLUME = "28ab39b5-5020-4de3-afb7-a690054c5a5e"


def test_device_id_is_derived_from_the_volume_and_fits_qemu() -> None:
    assert device_id(VOLUME) == "vol-28ab39b550204de3"
    assert device_id(VOLUME) == device_id(VOLUME.upper())
    assert len(device_id(str(uuid.uuid4()))) == 20  # virtio-blk's serial holds 20
    with pytest.raises(ValueError):
        device_id("../etc")


def test_plug_names_every_driver_and_no_backing() -> None:
    plug = plan_plug(device_id(VOLUME), ImageLayer("/p/v,1.qcow2", "qcow2"))
    file, fmt = plug.blockdevs
    assert file["driver"] == "file" and file["filename"] == "/p/v,1.qcow2"
    assert fmt == {
        "driver": "qcow2",
        "file": "vol-28ab39b550204de3.file",
        "node-name": "vol-28ab39b550204de3.fmt",
        "backing": None,
        "discard": "unmap",
        "read-only": False,
    }
    assert plug.device == {
        "driver": "virtio-blk-pci",
        "drive": "vol-28ab39b550204de3.fmt",
        "id": "vol-28ab39b550204de3",
        "serial": "vol-28ab39b550204de3",
    }
    assert plug.node_names == ("vol-28ab39b550204de3.fmt", "vol-28ab39b550204de3.file")
    raw = plan_plug(device_id(VOLUME), ImageLayer("/p/v.raw", "raw")).blockdevs[1]
    assert raw["driver"] == "raw" and "backing" not in raw
    with pytest.raises(ValueError):
        plan_plug("disk-root", ImageLayer("/p/v.raw", "raw"))


def test_argv_carries_attached_volumes_as_hotplug_would() -> None:
    plug = plan_plug(device_id(VOLUME), ImageLayer("/pool/v.qcow2", "qcow2"))
    spec = make_spec()
    paths = dataclasses.replace(
        make_paths(spec), volumes={device_id(VOLUME): ImageLayer("/pool/v.qcow2", "qcow2")}
    )
    options = [json.loads(a) for a in build(spec, paths=paths) if a.startswith("{")]
    assert [*plug.blockdevs, plug.device] == [o for o in options if "vol-" in json.dumps(o)]


@pytest.mark.parametrize(
    ("state", "machine", "mode"),
    [
        (VmState.SHUTOFF, "q35", "cold"),
        (VmState.DEFINED, "pc", "cold"),
        (VmState.RUNNING, "pc", "hot"),
        (VmState.PAUSED, "pc-i440fx-7.2", "hot"),
    ],
)
def test_plan_mode(state: VmState, machine: str, mode: str) -> None:
    assert plan_mode("vm1", "attach a volume to", state, machine) == mode


def test_plan_mode_refusals() -> None:
    with pytest.raises(StateError, match="it is starting"):
        plan_mode("vm1", "attach a volume to", VmState.STARTING, "pc")
    with pytest.raises(Conflict, match="takes no hot-plugged disk"):
        plan_mode("vm1", "attach a volume to", VmState.RUNNING, "q35")
    assert plan_mode("vm1", "resize", VmState.RUNNING, "q35", plugs=False) == "hot"
