"""The pure parts of launching: names, capacity, ports, SSH command lines, settings."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from corral.compute.capacity import Demand, Free, check
from corral.compute.launch import MAX_COUNT, instance_names
from corral.compute.ports import pick_port, reserved_ports
from corral.compute.settings import CapacitySettings, load_settings
from corral.compute.sshcmd import (
    SshTarget,
    host_keys_from_console,
    known_hosts,
    scp_argv,
    shell_quote,
    ssh_argv,
)
from corral.config import Home
from corral.errors import InsufficientCapacity, InvalidInput
from corral.spec import VmSpec
from corral.units import GiB, MiB

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q"
EC = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg="  # noqa: E501


def test_instance_names() -> None:
    assert instance_names("web", 1) == ["web"]
    assert instance_names("web", 3) == ["web-1", "web-2", "web-3"]
    with pytest.raises(InvalidInput, match="count"):
        instance_names("web", 0)
    with pytest.raises(InvalidInput, match="count"):
        instance_names("web", MAX_COUNT + 1)
    with pytest.raises(InvalidInput, match=r"^name"):
        instance_names("Web", 1)
    with pytest.raises(InvalidInput, match=r"^name"):
        instance_names("a" * 62, 2)  # a-1 fits, but not with the suffix


POLICY = CapacitySettings()
FREE = Free(memory=8 * GiB, disk=100 * GiB, cpus=2)


def test_capacity_fits() -> None:
    check(Demand(3, 1, 512 * MiB, 4 * GiB), FREE, POLICY)


@pytest.mark.parametrize(
    ("demand", "resource"),
    [
        (Demand(1, 4, 512 * MiB, 4 * GiB), "vcpus"),
        (Demand(1, 1, 8 * GiB, 4 * GiB), "memory"),  # the reserve makes it not fit
        (Demand(20, 1, 512 * MiB, 4 * GiB), "memory"),
        (Demand(2, 1, 256 * MiB, 60 * GiB), "disk"),
    ],
)
def test_capacity_refuses(demand: Demand, resource: str) -> None:
    with pytest.raises(InsufficientCapacity) as caught:
        check(demand, FREE, POLICY)
    assert caught.value.resource == resource
    assert caught.value.needed > caught.value.available


def test_thin_provisioning_ratio() -> None:
    demand = Demand(2, 1, 256 * MiB, 60 * GiB)
    check(demand, FREE, CapacitySettings(disk_allocation_ratio=2.0))


def test_pick_port() -> None:
    assert pick_port(set(), 2200, 2210, lambda p: True) == 2200
    assert pick_port({2200, 2201}, 2200, 2210, lambda p: True) == 2202
    assert pick_port({2200}, 2200, 2210, lambda p: p != 2201) == 2202
    with pytest.raises(InsufficientCapacity, match="ssh_port_range"):
        pick_port({2200, 2201}, 2200, 2201, lambda p: True)


def test_reserved_ports() -> None:
    spec = VmSpec.model_validate(
        {
            "name": "a",
            "boot": {"kind": "kernel", "kernel": "/k"},
            "nics": [
                {"forwards": [{"host_port": 2200, "guest_port": 22}]},
                {
                    "name": "n1",
                    "forwards": [{"protocol": "udp", "host_port": 53, "guest_port": 53}],
                },
            ],
        }
    )
    assert reserved_ports([spec]) == {2200}


def test_host_keys_from_console() -> None:
    log = "\r\n".join(
        [
            "boot noise",
            "-----BEGIN SSH HOST KEY KEYS-----",
            "ssh-rsa AAAAB3old root@x",
            "-----END SSH HOST KEY KEYS-----",
            "ec2: -----BEGIN SSH HOST KEY KEYS-----",
            f"ec2: {EC} root@web",
            f"[   12.345] cloud-init[99]: {ED} root@web",
            "ec2: -----END SSH HOST KEY KEYS-----",
            "-----BEGIN SSH HOST KEY KEYS-----",
            "ssh-ed25519 AAAAunfinished",
        ]
    )
    assert host_keys_from_console(log) == [EC, ED]
    assert host_keys_from_console("nothing here") == []
    assert known_hosts("web", [ED, ED]) == f"web.corral {ED}\n"


TARGET = SshTarget("web", "root", "127.0.0.1", 2201, "/h/.ssh/corral-k1", "/s/known_hosts", True)


def test_ssh_argv() -> None:
    argv = ssh_argv(TARGET, ["uname", "-a"])
    assert argv[:3] == ["ssh", "-p", "2201"]
    assert "HostKeyAlias=web.corral" in argv
    assert "UserKnownHostsFile=/s/known_hosts" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[argv.index("-i") + 1] == "/h/.ssh/corral-k1"
    assert argv[-4:] == ["root@127.0.0.1", "--", "uname", "-a"]
    unknown = SshTarget("web", "debian", "127.0.0.1", 2201, None, "/s/kh", False)
    argv = ssh_argv(unknown)
    assert "StrictHostKeyChecking=accept-new" in argv
    assert "-i" not in argv
    assert argv[-1] == "debian@127.0.0.1"
    assert shlex.split(shell_quote(argv)) == argv


def test_scp_argv() -> None:
    argv = scp_argv(TARGET, ["local.txt"], ":/tmp/x y")
    assert argv[:3] == ["scp", "-P", "2201"]
    assert argv[-2:] == ["local.txt", "root@127.0.0.1:/tmp/x y"]


def test_settings(tmp_path: Path) -> None:
    home = Home(tmp_path)
    assert load_settings(home).launch.ssh_port_range == (2200, 2999)
    (tmp_path / "corral.toml").write_text(
        '[launch]\nssh_port_range = "3000-3010"\n[capacity]\nmemory_reserve = "1G"\n'
    )
    settings = load_settings(home)
    assert settings.launch.ssh_port_range == (3000, 3010)
    assert settings.capacity.memory_reserve == GiB
    (tmp_path / "corral.toml").write_text('[launch]\nssh_port_range = "80-90"\n')
    with pytest.raises(InvalidInput, match=r"corral.toml: launch.ssh_port_range"):
        load_settings(home)
    (tmp_path / "corral.toml").write_text("[launch\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_settings(home)
    (tmp_path / "corral.toml").write_text("[capacity]\nbogus = 1\n")
    with pytest.raises(InvalidInput, match=r"capacity\.bogus"):
        load_settings(home)
