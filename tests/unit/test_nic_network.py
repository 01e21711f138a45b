"""Guest NICs on virtual networks: the spec, the tap's name, the QEMU options (command line and
hotplug), cloud-init's network-config, and a real QEMU that opens the tap.

The real-QEMU test makes its taps inside a network namespace of its own (``unshare --net``),
so the machine's interfaces are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from qemu.qmp import QMPClient
from tests.unit.test_argv import KERNEL, build, json_values, make_caps, make_spec
from tests.unit.test_argv_qemu import DEADLINE, QEMU, connect, host_caps, pvh_kernel

from corral.cloudinit.render import SeedRequest, render_network_config
from corral.errors import InvalidInput
from corral.host.caps import vhost_net_usable
from corral.net.plan import TAP_PREFIX, nic_tap
from corral.qemu.argv import build_argv
from corral.qemu.nic_nodes import NicPlug, plan_nic, set_link
from corral.qemu.paths import VmPaths
from corral.spec import parse
from corral.spec.net import IFNAME_PATTERN
from corral.spec.vm import NicSpec, VmSpec

VM_UUID = UUID("0f6f2a2e-5d7b-4c55-9d0e-3c1b8f1a7e42")

LAN: dict[str, Any] = {"name": "lan", "kind": "network", "network": "lan"}
DMZ: dict[str, Any] = {"name": "dmz", "kind": "network", "network": "dmz", "model": "e1000"}


def spec_with(*nics: dict[str, Any]) -> VmSpec:
    return parse(VmSpec, {"name": "vm", "uuid": str(VM_UUID), "boot": KERNEL, "nics": list(nics)})


# -- the spec ---------------------------------------------------------------------------------


def test_a_network_nic_names_its_network_and_may_fix_its_address_and_link() -> None:
    nic = NicSpec.model_validate({**LAN, "ip": "10.77.0.10", "link": False})
    assert (nic.kind, nic.network, str(nic.ip), nic.link) == ("network", "lan", "10.77.0.10", False)
    assert NicSpec.model_validate(LAN).link is True
    assert NicSpec.model_validate(LAN).ip is None
    # It survives the spec's own round trip (what is saved is read back the same).
    spec = spec_with({**LAN, "ip": "10.77.0.10", "link": False}, DMZ)
    assert VmSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("nic", "field", "words"),
    [
        ({"kind": "network"}, "nics.0", "needs the network"),
        ({**LAN, "network": "Bad_Name"}, "nics.0.network", "must match"),
        ({**LAN, "network": "a-name-too-long"}, "nics.0.network", "must match"),
        ({**LAN, "ip": "10.77.0.300"}, "nics.0.ip", "IPv4"),
        ({**LAN, "ip": "fe80::1"}, "nics.0.ip", "IPv4"),
        ({**LAN, "ip": "127.0.0.1"}, "nics.0.ip", "not a host address"),
        ({**LAN, "ip": "224.0.0.1"}, "nics.0.ip", "not a host address"),
        ({**LAN, "forwards": [{"host_port": 2222, "guest_port": 22}]}, "nics.0", "only to kind"),
        ({**LAN, "restrict": True}, "nics.0", "only to kind 'user'"),
        ({"network": "lan"}, "nics.0", "apply only to kind 'network'"),
        ({"ip": "10.77.0.10"}, "nics.0", "apply only to kind 'network'"),
        ({"kind": "bridge", "network": "lan"}, "nics.0.kind", "'user' or 'network'"),
    ],
)
def test_bad_nics_are_refused_naming_the_field(nic: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        spec_with(nic)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_fixed_address_is_given_once_per_network() -> None:
    with pytest.raises(InvalidInput, match="fixed ip"):
        spec_with({**LAN, "ip": "10.77.0.10"}, {**LAN, "name": "lan2", "ip": "10.77.0.10"})
    # The same address on two networks is two different addresses.
    spec = spec_with({**LAN, "ip": "10.77.0.10"}, {**DMZ, "ip": "10.77.0.10"})
    assert [n.network for n in spec.nics] == ["lan", "dmz"]


# -- the tap ----------------------------------------------------------------------------------


def test_the_tap_is_a_stable_function_of_the_vm_and_the_nic() -> None:
    tap = nic_tap(VM_UUID, "lan")
    assert tap == "crt-c0ae68a6c0f"  # the value in tests/golden/argv/nics-network.args
    assert nic_tap(UUID(str(VM_UUID)), "lan") == tap
    assert tap.startswith(TAP_PREFIX)
    assert IFNAME_PATTERN.match(tap) and len(tap) <= 15


def test_taps_differ_across_nics_and_vms() -> None:
    names = [f"n{i}" for i in range(2000)]
    taps = {nic_tap(VM_UUID, name) for name in names}
    assert len(taps) == len(names)
    other = UUID("5b3e9c1d-2f4a-4e8b-a1c7-6d9e0f2b3a41")
    assert nic_tap(other, "lan") != nic_tap(VM_UUID, "lan")
    # The separator keeps "vm/ab" + "c" apart from "vm/a" + "bc".
    assert nic_tap(VM_UUID, "net1") != nic_tap(VM_UUID, "net10")


# -- the QEMU options -------------------------------------------------------------------------


def test_a_network_nic_is_its_tap_with_no_scripts() -> None:
    spec = spec_with(LAN)
    plug = plan_nic(spec, 0, "pci")
    assert plug.netdev == {
        "id": "net-lan",
        "type": "tap",
        "ifname": nic_tap(VM_UUID, "lan"),
        "script": "no",
        "downscript": "no",
    }
    assert plug.device == {
        "driver": "virtio-net-pci",
        "netdev": "net-lan",
        "id": "nic-lan",
        "mac": spec.nic_mac(0),
        "romfile": "",
    }
    assert (plug.netdev_id, plug.device_id) == ("net-lan", "nic-lan")


def test_vhost_only_when_the_host_has_it_and_the_card_is_virtio() -> None:
    spec = spec_with(LAN, DMZ)
    assert plan_nic(spec, 0, "pci", vhost_net=True).netdev["vhost"] is True
    assert "vhost" not in plan_nic(spec, 0, "pci", vhost_net=False).netdev
    assert "vhost" not in plan_nic(spec, 1, "pci", vhost_net=True).netdev  # e1000
    assert plan_nic(spec, 1, "pci", vhost_net=True).device["driver"] == "e1000"
    micro = plan_nic(spec, 0, "mmio", vhost_net=True)
    assert micro.netdev["vhost"] is True
    assert micro.device["driver"] == "virtio-net-device"
    assert "romfile" not in micro.device


def test_a_user_nic_is_user_mode_nat_as_before() -> None:
    spec = spec_with({"name": "net0", "forwards": [{"host_port": 2222, "guest_port": 22}]})
    plug = plan_nic(spec, 0, "pci", vhost_net=True)
    assert plug.netdev == {
        "id": "net-net0",
        "type": "user",
        "hostfwd": [{"str": "tcp:127.0.0.1:2222-:22"}],
    }


def test_an_e1000_needs_pci() -> None:
    spec = spec_with(DMZ)
    with pytest.raises(InvalidInput) as caught:
        plan_nic(spec, 0, "mmio")
    assert caught.value.field == "nics.0.model"


@pytest.mark.parametrize("vhost", [False, True])
def test_the_command_line_and_hotplug_say_the_same(vhost: bool) -> None:
    spec = spec_with({"name": "net0"}, LAN, {**DMZ, "link": False})
    argv = build(spec, make_caps(vhost_net=vhost))
    plugs = [plan_nic(spec, i, "pci", vhost_net=vhost) for i in range(3)]
    assert json_values(argv, "-netdev") == [p.netdev for p in plugs]
    nics = [d for d in json_values(argv, "-device") if str(d["id"]).startswith("nic-")]
    assert nics == [p.device for p in plugs]
    assert ("vhost" in plugs[1].netdev) is vhost


def test_a_link_down_is_set_once_qemu_runs() -> None:
    spec = spec_with(LAN, {**DMZ, "link": False})
    assert set_link(spec, 0) is None
    assert set_link(spec, 1) == {"name": "nic-dmz", "up": False}


def test_make_caps_has_no_vhost_unless_told() -> None:
    assert make_caps().vhost_net is False
    assert make_caps(vhost_net=True).vhost_net is True


def test_vhost_net_is_a_usable_character_device(tmp_path: Path) -> None:
    assert vhost_net_usable(str(tmp_path / "absent")) is False
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert vhost_net_usable(str(plain)) is False
    assert vhost_net_usable("/dev/null") is True
    assert vhost_net_usable() is Path("/dev/vhost-net").is_char_device()


# -- cloud-init -------------------------------------------------------------------------------


def test_network_config_matches_every_nic_by_its_mac_link_down_included() -> None:
    spec = make_spec(
        uuid=str(VM_UUID),
        nics=[{"name": "net0"}, {**LAN, "mac": "52:54:00:AA:00:01"}, {**DMZ, "link": False}],
    )
    # As launch and clone build the request: every NIC of the spec, in order.
    nics = tuple((nic.name, spec.nic_mac(i)) for i, nic in enumerate(spec.nics))
    config = yaml.safe_load(render_network_config(SeedRequest("i-1", "vm", nics=nics)))
    ethernets = config["ethernets"]
    assert list(ethernets) == ["net0", "lan", "dmz"]
    assert ethernets["lan"]["match"] == {"macaddress": "52:54:00:aa:00:01"}
    assert ethernets["dmz"]["match"] == {"macaddress": spec.nic_mac(2)}
    assert ethernets["dmz"]["dhcp4"] is True
    argv = build(spec)
    macs = [d["mac"] for d in json_values(argv, "-device") if str(d["id"]).startswith("nic-")]
    assert macs == [e["match"]["macaddress"] for e in ethernets.values()]


# -- a real QEMU opens the taps -----------------------------------------------------------------

UNSHARE = shutil.which("unshare")
IP = shutil.which("ip")


async def _drive(
    paths: VmPaths,
    proc: subprocess.Popen[bytes],
    err: Path,
    plug: NicPlug,
    link: dict[str, object],
) -> dict[str, Any]:
    """Read QEMU's networks, take a card's link down (QMP refuses an unknown card), plug a
    NIC in as hotplug will, read them again, and quit."""
    qmp: QMPClient = await connect(paths.qmp_socket, proc, err)
    try:
        info = {"command-line": "info network"}
        before = await qmp.execute("human-monitor-command", info)
        await qmp.execute("set_link", link)
        await qmp.execute("netdev_add", plug.netdev)
        await qmp.execute("device_add", plug.device)
        after = await qmp.execute("human-monitor-command", info)
        filters = await qmp.execute("query-rx-filter")
        await qmp.execute("quit")
    except BaseException:
        await qmp.disconnect()
        raise
    # After "quit", QEMU may close the monitor before we do: that EOF is the expected end.
    with contextlib.suppress(EOFError):
        await qmp.disconnect()
    return {"before": before, "after": after, "filters": filters}


@pytest.mark.tcg
@pytest.mark.skipif(QEMU is None or UNSHARE is None or IP is None, reason="needs qemu, unshare, ip")
def test_qemu_opens_the_taps_and_hotplugs_another() -> None:
    short = Path(tempfile.mkdtemp(prefix="crn-", dir="/tmp"))
    try:
        kernel = short / "vmlinux"
        kernel.write_bytes(pvh_kernel())
        boot = {"kind": "kernel", "kernel": str(kernel)}
        nics = [LAN, {**DMZ, "link": False}, {**LAN, "name": "hot", "network": "lan"}]
        full = parse(
            VmSpec,
            {"name": "nics", "uuid": str(VM_UUID), "memory": "128M", "boot": boot, "nics": nics},
        )
        started = full.model_copy(update={"nics": full.nics[:2]})
        paths = VmPaths.for_dir(str(short), {})
        argv = build_argv(started, host_caps(), paths)
        taps = [nic_tap(VM_UUID, n.name) for n in full.nics]
        setup = " && ".join(f"ip tuntap add dev {t} mode tap vnet_hdr" for t in taps)
        err = short / "qemu.err"
        with err.open("wb") as err_file:
            proc = subprocess.Popen(
                [
                    UNSHARE or "unshare",
                    "--net",
                    "--",
                    "sh",
                    "-c",
                    f'{setup} && exec "$@"',
                    "sh",
                    *argv,
                    "-S",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
            )
        try:
            seen = asyncio.run(
                _drive(paths, proc, err, plan_nic(full, 2, "pci"), set_link(full, 1) or {})
            )
            assert proc.wait(timeout=DEADLINE) == 0, err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=DEADLINE)
    finally:
        shutil.rmtree(short, ignore_errors=True)

    for tap in taps[:2]:
        assert f"ifname={tap},script=no,downscript=no" in seen["before"]
    assert taps[2] not in seen["before"]
    assert f"ifname={taps[2]},script=no,downscript=no" in seen["after"]
    # virtio cards answer query-rx-filter with their MAC; the e1000 shows it in its line.
    filters = {f["name"]: f["main-mac"] for f in seen["filters"]}
    assert filters == {"nic-lan": full.nic_mac(0), "nic-hot": full.nic_mac(2)}
    dmz_line = next(line for line in seen["after"].splitlines() if "nic-dmz:" in line)
    assert f"macaddr={full.nic_mac(1)}" in dmz_line
