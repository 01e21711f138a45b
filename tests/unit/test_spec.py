"""VmSpec validation: every refusal names its field and says what is allowed."""

from typing import Any

import pytest

from corral.compute.define import CreateRequest, build_spec, parse_forward
from corral.errors import InvalidInput
from corral.spec import VmSpec, parse


def spec(**fields: Any) -> VmSpec:
    base: dict[str, Any] = {"name": "vm1", "boot": {"kind": "kernel", "kernel": "/k"}}
    base.update(fields)
    return parse(VmSpec, base)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"name": "Demo"}, "name", "must match"),
        ({"name": "-x"}, "name", "must match"),
        ({"name": "a" * 64}, "name", "must match"),
        ({"memory": "8M"}, "memory", "at least 16 MiB"),
        ({"memory": "5T"}, "memory", "at most 4 TiB"),
        ({"memory": "1.5x"}, "memory", "unknown unit"),
        ({"memory": "1000K"}, "memory", "whole number of MiB"),
        ({"vcpus": 0}, "vcpus", "greater than or equal to 1"),
        ({"disks": [{"name": "d", "size": "100"}]}, "disks.0.size", "at least 1 MiB"),
        ({"disks": [{"name": "d"}]}, "disks.0", "needs a size"),
        ({"disks": [{"name": "D1", "size": "1G"}]}, "disks.0.name", "must match"),
        ({"nics": [{"mac": "01:00:00:00:00:01"}]}, "nics.0.mac", "unicast"),
        (
            {"nics": [{"forwards": [{"host_port": 0, "guest_port": 22}]}]},
            "nics.0.forwards.0.host_port",
            "greater than or equal to 1",
        ),
        (
            {"nics": [{"forwards": [{"host_addr": "lo", "host_port": 1, "guest_port": 2}]}]},
            "host_addr",
            "IPv4",
        ),
        ({"boot": {"kind": "kernel"}}, "boot", "needs a kernel"),
        ({"boot": {"kind": "kernel", "kernel": "rel/path"}}, "boot.kernel", "absolute"),
        (
            {"boot": {"kind": "kernel", "kernel": "/k", "cmdline": "a\nb"}},
            "boot.cmdline",
            "control",
        ),
        ({"boot": {"kind": "firmware"}}, "spec", "at least one disk"),
        ({"vnc": {"listen": "loopback"}}, "vnc", "display number"),
        ({"vnc": {"listen": "0.0.0.0"}}, "vnc.listen", "unix"),
        ({"machine": "pc,accel=kvm"}, "machine", "must match"),
        ({"bogus": 1}, "bogus", "Extra inputs"),
    ],
)
def test_refusals_name_the_field(fields: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        spec(**fields)
    assert info.value.field.startswith(field) or field in info.value.field
    assert words in info.value.reason


def test_sizes_accept_units_and_default_to_mib_for_memory() -> None:
    assert spec(memory=256).memory == 256 * 1024**2
    assert spec(memory="1G").memory == 1024**3
    assert spec(memory="1.5GiB").memory == 1536 * 1024**2


def test_derived_mac_is_stable_and_locally_administered_prefix() -> None:
    s = spec(nics=[{"name": "net0"}, {"name": "net1"}])
    assert s.nic_mac(0) == s.nic_mac(0)
    assert s.nic_mac(0) != s.nic_mac(1)
    assert s.nic_mac(0).startswith("52:54:00:")


def test_duplicate_forward_refused() -> None:
    fw = {"host_port": 2222, "guest_port": 22}
    with pytest.raises(InvalidInput, match="forwarded only once"):
        spec(nics=[{"name": "a", "forwards": [fw]}, {"name": "b", "forwards": [fw]}])


def test_parse_forward() -> None:
    assert parse_forward("2222:22") == {"protocol": "tcp", "host_port": 2222, "guest_port": 22}
    assert parse_forward("udp:127.0.0.2:53:53")["host_addr"] == "127.0.0.2"
    with pytest.raises(InvalidInput, match="forward"):
        parse_forward("22")


def test_build_spec_without_image_makes_blank_root() -> None:
    s = build_spec(CreateRequest(name="x", disk_size="1G", data_disks=("2G",)), None)
    assert [(d.name, d.image, d.size) for d in s.disks] == [
        ("root", None, 1024**3),
        ("data1", None, 2 * 1024**3),
    ]
    assert s.boot.kind == "firmware"
