"""The command line :func:`build_argv` writes is one QEMU 7.2 accepts, with the graph it declares.

QEMU starts paused (``-S``) on a tiny PVH kernel written here (an ELF with a Xen PVH note and a
``cli; hlt`` loop), so nothing needs a real guest; the test then asks QMP what QEMU built.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ConnectError, QMPClient

from corral.host.caps import HostCaps, MachineType
from corral.qemu.argv import build_argv
from corral.qemu.paths import DiskFiles, ImageLayer, VmPaths
from corral.spec import parse
from corral.spec.vm import VmSpec

QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")

pytestmark = [
    pytest.mark.tcg,
    pytest.mark.skipif(QEMU is None or QEMU_IMG is None, reason="needs qemu-system-x86_64"),
]

#: How long QEMU may take to open its monitor, and to exit after ``quit``.
DEADLINE = 20.0


def pvh_kernel() -> bytes:
    """A minimal ELF64 kernel QEMU boots through PVH: ``cli; hlt; jmp .`` at 1 MiB."""
    load = 0x100000
    code = bytes([0xFA, 0xF4, 0xEB, 0xFD])
    note_name = b"Xen\x00"
    # XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit PVH entry point.
    note = struct.pack("<III", len(note_name), 4, 18) + note_name + struct.pack("<I", load)
    ehsize, phsize = 64, 56
    code_off = ehsize + 2 * phsize
    note_off = code_off + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, load, ehsize, 0, 0, ehsize, phsize, 2, 64, 0, 0
    )
    ph_load = struct.pack("<IIQQQQQQ", 1, 5, code_off, load, load, len(code), len(code), 0x1000)
    ph_note = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return header + ph_load + ph_note + code + note


def host_caps() -> HostCaps:
    """Capabilities of the installed binary, asked directly (TCG: this test needs no KVM)."""
    assert QEMU is not None
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"version (\d+)\.(\d+)\.(\d+)", version.stdout)
    assert found, version.stdout
    major, minor, micro = (int(x) for x in found.groups())
    devices = subprocess.run(
        [QEMU, "-device", "help"], capture_output=True, text=True, check=True
    ).stdout
    usage = subprocess.run([QEMU, "-help"], capture_output=True, text=True, check=True).stdout
    return HostCaps(
        qemu_binary=QEMU,
        qemu_version=(major, minor, micro),
        machines={"pc": MachineType(name="pc", max_cpus=255)},
        devices=frozenset(re.findall(r'^name "([^"]+)"', devices, re.MULTILINE)),
        accelerators=frozenset({"tcg"}),
        accel="tcg",
        seccomp="-sandbox" in usage,
        host_cpus=1,
        host_memory=1024**3,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory under /tmp (UNIX socket paths must stay short) with ',' and '='."""
    path = Path(tempfile.mkdtemp(prefix="corral,a=b-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def qemu_img(*args: str) -> None:
    assert QEMU_IMG is not None
    subprocess.run([QEMU_IMG, *args], capture_output=True, check=True)


async def connect(path: str, proc: subprocess.Popen[bytes], err: Path) -> QMPClient:
    """Connect to QEMU's monitor once it listens, failing at the deadline or if QEMU exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"QEMU exited with {proc.returncode}: {err.read_text()}")
        qmp = QMPClient("argv-test")
        try:
            await qmp.connect(path)
        except ConnectError:
            if loop.time() > deadline:
                pytest.fail(f"QEMU's monitor did not open within {DEADLINE} s")
            await asyncio.sleep(0.02)  # poll interval, bounded by the deadline above
        else:
            return qmp


async def inspect(paths: VmPaths, proc: subprocess.Popen[bytes], err: Path) -> dict[str, Any]:
    """Ask QEMU what it built (and read its pidfile while it runs), then tell it to quit."""
    qmp = await connect(paths.qmp_socket, proc, err)
    try:
        pid = Path(paths.pidfile).read_text().strip()
        answers: dict[str, Any] = {
            name: await qmp.execute(name)
            for name in (
                "query-status",
                "query-name",
                "query-uuid",
                "query-block",
                "query-named-block-nodes",
                "x-debug-query-block-graph",
                "query-chardev",
                "query-vnc",
                "query-cpus-fast",
            )
        }
        cpu_path = answers["query-cpus-fast"][0]["qom-path"]
        answers["cpu-type"] = await qmp.execute("qom-get", {"path": cpu_path, "property": "type"})
        answers["usernet"] = await qmp.execute(
            "human-monitor-command", {"command-line": "info usernet"}
        )
        answers["pidfile"] = pid
        answers["events-monitor"] = await run_states_seen(paths, proc, err, qmp)
        await qmp.execute("quit")
    except BaseException:
        await qmp.disconnect()
        raise
    # After "quit", QEMU may close the monitor before we do: that EOF is the expected end.
    with contextlib.suppress(EOFError):
        await qmp.disconnect()
    return answers


async def run_states_seen(
    paths: VmPaths, proc: subprocess.Popen[bytes], err: Path, qmp: QMPClient
) -> dict[str, list[str]]:
    """With a client on the events monitor too, run and stop the vCPUs through the command
    monitor: the run-state events each monitor received (both get every event)."""
    events = await connect(paths.events_socket, proc, err)
    try:
        await qmp.execute("cont")
        await qmp.execute("stop")
        seen: dict[str, list[str]] = {}
        for label, client in (("charmonitor", qmp), ("charevents", events)):
            names: list[str] = []
            while "STOP" not in names:
                event = await asyncio.wait_for(client.events.get(), DEADLINE)
                if event["event"] in ("RESUME", "STOP"):
                    names.append(event["event"])
            seen[label] = names
        return seen
    finally:
        await events.disconnect()


def run_paused(argv: list[str], paths: VmPaths, workdir: Path) -> dict[str, Any]:
    """Start QEMU paused (``-S``) on ``argv``, inspect it through QMP, and make sure it ends."""
    err = workdir / "qemu.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [*argv, "-S"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file
        )
    try:
        answers = asyncio.run(inspect(paths, proc, err))
        assert proc.wait(timeout=DEADLINE) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)
    answers["pid"] = str(proc.pid)
    return answers


def make_disks(spec: VmSpec, workdir: Path, fmt: str = "qcow2") -> dict[str, DiskFiles]:
    """Create every disk of ``spec``: a blank volume, or an overlay on a fresh base image.

    :param fmt: ``raw`` makes blank volumes and base images raw (overlays stay qcow2).
    """
    disks = {}
    for disk in spec.disks:
        if disk.image is None:
            top = workdir / "vm" / f"{disk.name}.{fmt}"
            qemu_img("create", "-f", fmt, str(top), str(disk.size))
            disks[disk.name] = DiskFiles(ImageLayer(str(top), fmt))  # type: ignore[arg-type]
            continue
        base = workdir / f"{disk.image}.{fmt}"
        if not base.exists():
            qemu_img("create", "-f", fmt, str(base), "16M")
        top = workdir / "vm" / f"{disk.name}.qcow2"
        qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", fmt, str(top))
        disks[disk.name] = DiskFiles(
            ImageLayer(str(top), "qcow2"),
            (ImageLayer(str(base), fmt),),  # type: ignore[arg-type]
        )
    return disks


def direct_io_works(directory: Path) -> bool:
    """Whether files here can be opened with O_DIRECT (tmpfs cannot: cache none fails)."""
    probe = directory / "direct-probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def free_vnc_display() -> int:
    for display in range(99, 0, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", 5900 + display))
            except OSError:
                continue
            return display
    pytest.skip("no free VNC display on loopback")


def test_qemu_accepts_kernel_boot_argv(workdir: Path) -> None:
    kernel = workdir / "vmlinux"
    kernel.write_bytes(pvh_kernel())
    initrd = workdir / "initrd.img"
    initrd.write_bytes(b"\0" * 512)
    vm = workdir / "vm"
    vm.mkdir()
    base, root, data = workdir / "base.qcow2", vm / "root.qcow2", vm / "data.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "64M")
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(root))
    qemu_img("create", "-f", "qcow2", str(data), "32M")
    port = free_port()
    spec = parse(
        VmSpec,
        {
            "name": "accept",
            "uuid": "5e2f8a7c-1d3b-4f6e-9a0c-7b8d9e0f1a2b",
            "memory": "128M",
            "boot": {
                "kind": "kernel",
                "kernel": str(kernel),
                "initrd": str(initrd),
                "cmdline": "console=ttyS0,115200 -device foo,bar=1",
            },
            "disks": [
                {"name": "root", "image": "base"},
                {"name": "data", "size": "32M", "cache": "writethrough"},
            ],
            "nics": [{"restrict": True, "forwards": [{"host_port": port, "guest_port": 22}]}],
            "vnc": {"listen": "unix"},
        },
    )
    paths = VmPaths.for_dir(
        str(vm),
        {
            "root": DiskFiles(ImageLayer(str(root), "qcow2"), (ImageLayer(str(base), "qcow2"),)),
            "data": DiskFiles(ImageLayer(str(data), "qcow2")),
        },
    )
    answers = run_paused(build_argv(spec, host_caps(), paths), paths, workdir)

    assert answers["query-status"]["status"] == "prelaunch"
    assert answers["query-name"] == {"name": "accept"}
    assert answers["query-uuid"] == {"UUID": str(spec.uuid)}
    assert answers["cpu-type"] == "qemu64-x86_64-cpu"

    # The graph is the one declared: explicit file and backing edges, nothing QEMU chose.
    graph = answers["x-debug-query-block-graph"]
    names = {n["id"]: n["name"] for n in graph["nodes"]}
    edges = {(names[e["parent"]], e["name"], names[e["child"]]) for e in graph["edges"]}
    assert ("root.0.fmt", "file", "root.0.file") in edges
    assert ("root.0.fmt", "backing", "root.1.fmt") in edges
    assert ("root.1.fmt", "file", "root.1.file") in edges
    assert ("data.0.fmt", "file", "data.0.file") in edges
    assert not {e for e in edges if e[1] == "backing" and e[0] != "root.0.fmt"}
    nodes = {n["node-name"]: n for n in answers["query-named-block-nodes"]}
    assert {n: nodes[n]["ro"] for n in ("root.0.fmt", "root.1.fmt", "data.0.fmt")} == {
        "root.0.fmt": False,
        "root.1.fmt": True,
        "data.0.fmt": False,
    }
    assert nodes["root.1.fmt"]["file"] == str(base)
    assert attached_nodes(answers) == {"disk-root": "root.0.fmt", "disk-data": "data.0.fmt"}

    labels = {c["label"] for c in answers["query-chardev"]}
    assert {"charmonitor", "charevents", "charserial0"} <= labels
    assert answers["events-monitor"] == {
        "charmonitor": ["RESUME", "STOP"],
        "charevents": ["RESUME", "STOP"],
    }
    assert answers["query-vnc"]["enabled"] is True
    assert re.search(rf"TCP\[HOST_FORWARD\].*127\.0\.0\.1\s+{port}\s", answers["usernet"])
    assert answers["pidfile"] == answers["pid"]
    assert stat.S_ISSOCK(Path(paths.vnc_socket).stat().st_mode)
    assert Path(paths.serial_log).exists()


def attached_nodes(answers: dict[str, Any]) -> dict[str, str]:
    """Top node of each attached drive, by device id (flash drives by their QOM path)."""
    # qdev is the device id on virtio-mmio, a path through the PCI proxy on PCI.
    return {
        re.sub(r"^/machine/peripheral/(.*)/virtio-backend$", r"\1", b["qdev"]): b["inserted"][
            "node-name"
        ]
        for b in answers["query-block"]
    }


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
KERNEL_BOOT = "kernel"
_CACHE_DISKS = [
    ("wb", "writeback"),
    ("none", "none"),
    ("wt", "writethrough"),
    ("ds", "directsync"),
    ("unsafe", "unsafe"),
]


@pytest.mark.parametrize(
    ("spec_fields", "caps_fields", "fmt"),
    [
        pytest.param(
            {
                "machine": "q35",
                "boot": {"firmware": "uefi"},
                "disks": [{"name": "root", "image": "b"}],
            },
            {"ovmf_code": str(OVMF_CODE)},
            "qcow2",
            id="uefi-q35",
        ),
        pytest.param(
            {
                "disks": [{"name": "root", "size": "16M"}],
                "nics": [{"model": "e1000", "mac": "52:54:00:12:34:56"}, {"name": "net1"}],
                "vnc": {"listen": "loopback", "display": 0},
            },
            {},
            "qcow2",
            id="bios-e1000-two-nics-vnc-loopback",
        ),
        pytest.param(
            {
                "machine": "microvm",
                "boot": KERNEL_BOOT,
                "disks": [{"name": "root", "image": "b"}],
                "nics": [{}],
                "vnc": {"listen": "unix"},
            },
            {},
            "qcow2",
            id="microvm",
        ),
        pytest.param(
            {
                "boot": KERNEL_BOOT,
                "disks": [
                    {"name": name, "size": "1M", "cache": mode, "discard": mode != "none"}
                    for name, mode in _CACHE_DISKS
                ],
            },
            {},
            "qcow2",
            id="cache-modes",
        ),
        pytest.param(
            {
                "boot": KERNEL_BOOT,
                "disks": [{"name": "blank", "size": "1M"}, {"name": "clone", "image": "b"}],
                "serial": {"enabled": False},
                "cpu": "max",
            },
            {"seccomp": False},
            "raw",
            id="raw-layers-no-serial-no-sandbox",
        ),
    ],
)
def test_qemu_accepts_variants(
    workdir: Path, spec_fields: dict[str, Any], caps_fields: dict[str, Any], fmt: str
) -> None:
    if spec_fields.get("boot") == KERNEL_BOOT:
        kernel = workdir / "vmlinux"
        kernel.write_bytes(pvh_kernel())
        spec_fields = {**spec_fields, "boot": {"kind": "kernel", "kernel": str(kernel)}}
    if "vnc" in spec_fields and spec_fields["vnc"]["listen"] == "loopback":
        spec_fields = {**spec_fields, "vnc": {"listen": "loopback", "display": free_vnc_display()}}
    caps = host_caps().model_copy(update=caps_fields)
    spec = parse(VmSpec, {"name": "variant", **spec_fields})
    (workdir / "vm").mkdir()
    if any(d.cache in ("none", "directsync") for d in spec.disks) and not direct_io_works(workdir):
        pytest.skip("O_DIRECT is not supported in /tmp here")
    paths = VmPaths.for_dir(str(workdir / "vm"), make_disks(spec, workdir, fmt))
    if caps.ovmf_code is not None:
        if not (OVMF_CODE.exists() and OVMF_VARS.exists()):
            pytest.skip("OVMF is not installed")
        assert paths.ovmf_vars is not None
        shutil.copyfile(OVMF_VARS, paths.ovmf_vars)

    answers = run_paused(build_argv(spec, caps, paths), paths, workdir)

    assert answers["query-status"]["status"] == "prelaunch"
    expected = {f"disk-{d.name}": f"{d.name}.0.fmt" for d in spec.disks}
    if caps.ovmf_code:
        expected |= {"/machine/system.flash0": "fw-code", "/machine/system.flash1": "fw-vars"}
    assert attached_nodes(answers) == expected
    labels = {c["label"] for c in answers["query-chardev"]}
    assert ("charserial0" in labels) == spec.serial.enabled
    assert "charevents" in labels
    assert answers["query-vnc"]["enabled"] is (spec.vnc is not None)
