"""Unit tests of :mod:`corral.qemu.argv`: escaping, injection attempts, disk chains, errors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from corral.errors import HostError, InvalidInput
from corral.host.caps import HostCaps, MachineType
from corral.qemu.argv import NODE_NAME, build_argv
from corral.qemu.paths import DiskFiles, ImageLayer, VmPaths
from corral.spec import parse
from corral.spec.vm import VmSpec

UUID = "3b0c7e52-5d0a-4c57-9a51-2f1e0d4c8a10"
KERNEL = {"kind": "kernel", "kernel": "/boot/vmlinux", "initrd": "/boot/initrd.img"}
DEVICES = frozenset(
    {
        "VGA",
        "e1000",
        "isa-serial",
        "virtio-blk-device",
        "virtio-blk-pci",
        "virtio-gpu-device",
        "virtio-net-device",
        "virtio-net-pci",
    }
)


def make_caps(**over: Any) -> HostCaps:
    base: dict[str, Any] = {
        "qemu_binary": "/usr/bin/qemu-system-x86_64",
        "qemu_version": (7, 2, 0),
        "machines": {
            "pc": MachineType(name="pc", max_cpus=255),
            "microvm": MachineType(name="microvm", max_cpus=288),
        },
        "devices": DEVICES,
        "accelerators": frozenset({"kvm", "tcg"}),
        "accel": "tcg",
        "seccomp": True,
        "ovmf_code": "/usr/share/OVMF/OVMF_CODE.fd",
        "host_cpus": 2,
        "host_memory": 8 * 1024**3,
        "vhost_net": False,
    }
    return HostCaps(**{**base, **over})


def make_spec(**fields: Any) -> VmSpec:
    return parse(VmSpec, {"name": "vm", "uuid": UUID, "boot": KERNEL, **fields})


def make_paths(spec: VmSpec, root: str = "/var/lib/corral/vms/vm") -> VmPaths:
    disks = {d.name: DiskFiles(ImageLayer(f"{root}/{d.name}.qcow2", "qcow2")) for d in spec.disks}
    return VmPaths.for_dir(root, disks)


def build(spec: VmSpec, caps: HostCaps | None = None, paths: VmPaths | None = None) -> list[str]:
    return build_argv(spec, caps or make_caps(), paths or make_paths(spec))


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option and i > 0]


def json_values(argv: list[str], option: str) -> list[dict[str, Any]]:
    return [json.loads(v) for v in values(argv, option)]


def nodes(argv: list[str]) -> dict[str, dict[str, Any]]:
    return {n["node-name"]: n for n in json_values(argv, "-blockdev")}


def parse_qemu_opts(text: str, implied: str | None = None) -> dict[str, str]:
    """Split a QemuOpts string the way QEMU does: a key runs to ``=`` or ``,``; a value runs
    to a single ``,`` (``,,`` is a comma); a first element without ``=`` is the implied key.
    Duplicate keys fail the test, since they would mean an injected option."""
    result: dict[str, str] = {}
    pos = 0
    first = True
    while pos < len(text):
        stops = [i for i in (text.find("=", pos), text.find(",", pos)) if i >= 0]
        stop = min(stops) if stops else len(text)
        if first and implied is not None and (stop == len(text) or text[stop] == ","):
            key, start = implied, pos
        else:
            assert stop < len(text) and text[stop] == "=", f"flag without value in {text!r}"
            key, start = text[pos:stop], stop + 1
        value = []
        i = start
        while i < len(text):
            if text[i] == ",":
                if text[i + 1 : i + 2] == ",":
                    value.append(",")
                    i += 2
                    continue
                break
            value.append(text[i])
            i += 1
        assert key not in result, f"{key!r} appears twice in {text!r}"
        result[key] = "".join(value)
        pos = i + 1
        first = False
    return result


# -- injection attempts


def test_cmdline_cannot_add_options() -> None:
    cmdline = "console=ttyS0, -device foo -netdev user,id=x -append evil"
    argv = build(make_spec(boot={**KERNEL, "cmdline": cmdline}))
    assert values(argv, "-append") == [cmdline]
    assert values(argv, "-netdev") == []
    assert [d["driver"] for d in json_values(argv, "-device")] == ["isa-serial"]


def test_kernel_and_initrd_paths_are_one_argument_each() -> None:
    boot = {"kind": "kernel", "kernel": "/a,b=c/vm linux -device x", "initrd": "/a,b/-initrd"}
    argv = build(make_spec(boot=boot))
    assert values(argv, "-kernel") == ["/a,b=c/vm linux -device x"]
    assert values(argv, "-initrd") == ["/a,b/-initrd"]


@pytest.mark.parametrize(
    "root",
    [
        "/srv/a,b/vms/vm",
        "/srv/x,id=evil,path=/tmp/evil/vms/vm",
        "/srv/a=b/vms/vm",
        "/srv/,,/vms/vm",
        "/srv/a,=,b/vms/vm",
    ],
)
def test_qemuopts_paths_are_escaped(root: str) -> None:
    spec = make_spec(vnc={"listen": "unix"})
    paths = make_paths(spec, root)
    argv = build(spec, paths=paths)
    monitor, events, serial = (
        parse_qemu_opts(v, implied="backend") for v in values(argv, "-chardev")
    )
    assert monitor == {
        "backend": "socket",
        "id": "charmonitor",
        "path": paths.qmp_socket,
        "server": "on",
        "wait": "off",
    }
    assert events == {
        "backend": "socket",
        "id": "charevents",
        "path": paths.events_socket,
        "server": "on",
        "wait": "off",
    }
    assert serial == {
        "backend": "socket",
        "id": "charserial0",
        "path": paths.serial_socket,
        "server": "on",
        "wait": "off",
        "logfile": paths.serial_log,
        "logappend": "on",
    }
    (vnc,) = (parse_qemu_opts(v) for v in values(argv, "-vnc"))
    assert vnc == {"vnc": f"unix:{paths.vnc_socket}"}
    assert values(argv, "-pidfile") == [paths.pidfile]


def test_json_paths_keep_every_character() -> None:
    spec = make_spec(disks=[{"name": "root", "image": "base"}])
    odd = '/srv/"q",{}/x\\y,z=1 -device foo/base.qcow2'
    chain = DiskFiles(ImageLayer("/v/root.qcow2", "qcow2"), (ImageLayer(odd, "qcow2"),))
    argv = build(spec, paths=VmPaths.for_dir("/v", {"root": chain}))
    assert nodes(argv)["root.1.file"]["filename"] == odd


def test_name_is_escaped_and_fixed_keys() -> None:
    argv = build(make_spec(name="a-" + "b" * 61))
    assert parse_qemu_opts(values(argv, "-name")[0]) == {
        "guest": "a-" + "b" * 61,
        "debug-threads": "on",
    }


# -- names and ids


def test_names_at_their_limits() -> None:
    disk = "d" * 16
    spec = make_spec(
        name="v" * 63,
        disks=[{"name": disk, "image": "base"}],
        nics=[{"name": "n" * 16}],
    )
    chain = DiskFiles(
        ImageLayer("/v/top.qcow2", "qcow2"),
        tuple(ImageLayer(f"/i/{i}.qcow2", "qcow2") for i in range(99)),
    )
    argv = build(spec, paths=VmPaths.for_dir("/v", {disk: chain}))
    graph = nodes(argv)
    assert len(graph) == 200
    assert all(NODE_NAME.match(n) and len(n) <= 31 for n in graph)
    assert f"{disk}.99.fmt" in graph
    ids = [d["id"] for d in json_values(argv, "-device")]
    assert ids == [f"disk-{disk}", f"nic-{'n' * 16}", "serial0"]
    assert all(NODE_NAME.match(i) for i in ids)


def test_node_names_come_from_the_spec_not_positions() -> None:
    a = {"name": "alpha", "size": "1G"}
    b = {"name": "beta", "size": "1G"}
    one = nodes(build(make_spec(disks=[a, b])))
    two = nodes(build(make_spec(disks=[b, a])))
    assert one == two


# -- disks


@pytest.mark.parametrize(
    ("mode", "direct", "no_flush", "write_cache"),
    [
        ("writeback", False, False, "on"),
        ("none", True, False, "on"),
        ("writethrough", False, False, "off"),
        ("directsync", True, False, "off"),
        ("unsafe", False, True, "on"),
    ],
)
def test_cache_modes(mode: str, direct: bool, no_flush: bool, write_cache: str) -> None:
    spec = make_spec(disks=[{"name": "root", "image": "base", "cache": mode}])
    chain = DiskFiles(ImageLayer("/v/root.qcow2", "qcow2"), (ImageLayer("/i/b.qcow2", "qcow2"),))
    argv = build(spec, paths=VmPaths.for_dir("/v", {"root": chain}))
    for node in nodes(argv).values():
        assert node["cache"] == {"direct": direct, "no-flush": no_flush}
    (device,) = (d for d in json_values(argv, "-device") if d["id"] == "disk-root")
    assert device["write-cache"] == write_cache


def test_chain_is_explicit_and_backing_read_only() -> None:
    spec = make_spec(disks=[{"name": "root", "image": "base"}])
    chain = DiskFiles(
        ImageLayer("/v/root.qcow2", "qcow2"),
        (ImageLayer("/i/mid.qcow2", "qcow2"), ImageLayer("/i/base.raw", "raw")),
    )
    argv = build(spec, paths=VmPaths.for_dir("/v", {"root": chain}))
    blockdevs = json_values(argv, "-blockdev")
    assert [n["node-name"] for n in blockdevs] == [
        "root.2.file",
        "root.2.fmt",
        "root.1.file",
        "root.1.fmt",
        "root.0.file",
        "root.0.fmt",
    ]
    graph = nodes(argv)
    assert graph["root.0.fmt"]["backing"] == "root.1.fmt"
    assert graph["root.1.fmt"]["backing"] == "root.2.fmt"
    assert graph["root.2.fmt"]["driver"] == "raw"
    assert "backing" not in graph["root.2.fmt"]
    assert graph["root.0.fmt"]["read-only"] is False
    assert all(graph[n]["read-only"] for n in graph if not n.startswith("root.0."))
    assert graph["root.0.fmt"]["discard"] == "unmap"
    assert all("discard" not in graph[n] for n in graph if not n.startswith("root.0."))


def test_blank_qcow2_has_null_backing() -> None:
    argv = build(make_spec(disks=[{"name": "data", "size": "1G"}]))
    assert nodes(argv)["data.0.fmt"]["backing"] is None


def test_readonly_disk() -> None:
    argv = build(make_spec(disks=[{"name": "seed", "image": "iso", "readonly": True}]))
    graph = nodes(argv)
    assert all(n["read-only"] for n in graph.values())
    assert all("discard" not in n for n in graph.values())


def test_discard_off() -> None:
    argv = build(make_spec(disks=[{"name": "root", "size": "1G", "discard": False}]))
    assert all("discard" not in n for n in nodes(argv).values())


def test_bootindex_on_first_disk_for_firmware_boot_only() -> None:
    disks = [{"name": "root", "size": "1G"}, {"name": "data", "size": "1G"}]
    spec = parse(VmSpec, {"name": "vm", "uuid": UUID, "disks": disks})
    firmware = json_values(build(spec), "-device")
    assert [d.get("bootindex") for d in firmware if d["id"].startswith("disk-")] == [1, None]
    kernel = json_values(build(make_spec(disks=disks)), "-device")
    assert all("bootindex" not in d for d in kernel)


def test_two_qmp_monitors_commands_and_events() -> None:
    """Commands and the long-lived events client each have a QMP monitor of their own."""
    argv = build(make_spec())
    assert [parse_qemu_opts(v) for v in values(argv, "-mon")] == [
        {"chardev": "charmonitor", "id": "monitor", "mode": "control"},
        {"chardev": "charevents", "id": "events", "mode": "control"},
    ]
    paths = make_paths(make_spec())
    assert paths.events_socket != paths.qmp_socket


# -- CPU, display, sandbox


@pytest.mark.parametrize(
    ("accel", "cpu", "expected"),
    [
        ("tcg", None, "qemu64,rdrand=on"),
        ("kvm", None, "host"),
        ("kvm", "Haswell", "Haswell"),
        ("tcg", "max", "max"),
    ],
)
def test_cpu_model(accel: str, cpu: str | None, expected: str) -> None:
    argv = build(make_spec(cpu=cpu), caps=make_caps(accel=accel))
    assert values(argv, "-cpu") == [expected]
    assert values(argv, "-accel") == [accel]


def test_display_none_without_vnc() -> None:
    argv = build(make_spec())
    assert values(argv, "-display") == ["none"]
    assert "-vnc" not in argv
    assert "-vga" not in argv


@pytest.mark.parametrize(
    ("vnc", "address"),
    [
        ({"listen": "unix"}, "vnc=unix:/var/lib/corral/vms/vm/vnc.sock"),
        ({"listen": "loopback", "display": 3}, "vnc=127.0.0.1:3"),
    ],
)
def test_vnc_listens_only_on_unix_or_loopback(vnc: dict[str, Any], address: str) -> None:
    argv = build(make_spec(vnc=vnc))
    assert values(argv, "-vnc") == [address]
    assert "-display" not in argv
    assert [d["driver"] for d in json_values(argv, "-device")][-1] == "VGA"


def test_seccomp_follows_caps() -> None:
    assert len(values(build(make_spec()), "-sandbox")) == 1
    assert values(build(make_spec(), caps=make_caps(seccomp=False)), "-sandbox") == []


def test_serial_disabled() -> None:
    argv = build(make_spec(serial={"enabled": False}))
    assert [parse_qemu_opts(v, "backend")["id"] for v in values(argv, "-chardev")] == [
        "charmonitor",
        "charevents",
    ]
    assert json_values(argv, "-device") == []


def test_microvm_uses_mmio_devices() -> None:
    spec = make_spec(
        machine="microvm",
        disks=[{"name": "root", "size": "1G"}],
        nics=[{}],
        vnc={"listen": "unix"},
    )
    drivers = [d["driver"] for d in json_values(build(spec), "-device")]
    assert drivers == ["virtio-blk-device", "virtio-net-device", "isa-serial", "virtio-gpu-device"]


# -- refusals


def test_uefi_without_ovmf_is_a_host_error() -> None:
    spec = parse(
        VmSpec, {"name": "vm", "boot": {"firmware": "uefi"}, "disks": [{"name": "r", "size": "1G"}]}
    )
    with pytest.raises(HostError, match="OVMF"):
        build(spec, caps=make_caps(ovmf_code=None))


def test_uefi_without_vars_is_a_caller_bug() -> None:
    spec = parse(
        VmSpec, {"name": "vm", "boot": {"firmware": "uefi"}, "disks": [{"name": "r", "size": "1G"}]}
    )
    paths = dataclasses.replace(make_paths(spec), ovmf_vars=None)
    with pytest.raises(ValueError, match="ovmf_vars"):
        build(spec, paths=paths)


def test_disk_without_files_is_a_caller_bug() -> None:
    spec = make_spec(disks=[{"name": "root", "size": "1G"}])
    with pytest.raises(ValueError, match="root"):
        build(spec, paths=VmPaths.for_dir("/v"))


def test_raw_layer_with_backing_is_refused() -> None:
    spec = make_spec(disks=[{"name": "root", "image": "base"}])
    chain = DiskFiles(ImageLayer("/v/root.raw", "raw"), (ImageLayer("/i/b.qcow2", "qcow2"),))
    with pytest.raises(ValueError, match="raw"):
        build(spec, paths=VmPaths.for_dir("/v", {"root": chain}))


def test_e1000_on_microvm_is_invalid() -> None:
    spec = make_spec(machine="microvm", nics=[{"model": "virtio-net-pci"}])
    with pytest.raises(InvalidInput) as err:
        build(
            spec.model_copy(update={"nics": (spec.nics[0].model_copy(update={"model": "e1000"}),)})
        )
    assert err.value.field == "nics.0.model"
    with pytest.raises(InvalidInput, match="no PCI bus for e1000"):
        make_spec(machine="microvm", nics=[{"model": "e1000"}])


@pytest.mark.parametrize("machine", ["isapc", "none", "xenfv"])
def test_unknown_machine_family_is_invalid(machine: str) -> None:
    with pytest.raises(InvalidInput) as err:
        build(make_spec().model_copy(update={"machine": machine}))
    assert err.value.field == "machine"
    with pytest.raises(InvalidInput) as err:
        make_spec(machine=machine)
    assert err.value.field == "machine"


def test_missing_device_model_is_a_host_error() -> None:
    with pytest.raises(HostError, match="isa-serial"):
        build(make_spec(), caps=make_caps(devices=DEVICES - {"isa-serial"}))


def test_old_qemu_is_a_host_error() -> None:
    with pytest.raises(HostError, match=r"QEMU 7\.0\.0 is too old"):
        build(make_spec(), caps=make_caps(qemu_version=(7, 0, 0)))


def test_socket_path_too_long_is_a_host_error() -> None:
    spec = make_spec()
    with pytest.raises(HostError, match="socket path"):
        build(spec, paths=make_paths(spec, "/" + "x" * 100))
