"""The reference guest, built for real and booted under QEMU (TCG).

Every wait polls the serial log or QEMU with a deadline. The deadlines are generous (a TCG
boot takes 2-3 s here) so that a loaded CI machine does not fail them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from guest_vm import GuestError, GuestVM

from corral.guest import (
    HEARTBEAT_PREFIX,
    INITRAMFS_ERROR_PREFIX,
    POWEROFF_MARKER,
    REBOOT_MARKER,
    SHUTDOWN_MARKER,
    ReferenceGuest,
    build_reference_guest,
    cached_reference_guest,
)
from corral.guest.debian import PROGRAM_PACKAGES
from corral.guest.elf import dynamic_linking, elf_notes
from corral.guest.kernel import pvh_entry

BOOT_DEADLINE = 60.0
EXIT_DEADLINE = 30.0

pytestmark = [pytest.mark.slow]

Boot = Callable[..., GuestVM]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def heartbeats(text: str) -> list[float]:
    return [float(m) for m in re.findall(rf"^{HEARTBEAT_PREFIX} (\d+\.\d+)$", text, re.MULTILINE)]


# -- the build -----------------------------------------------------------------------------------


def test_artefacts(reference_guest: ReferenceGuest, tmp_path: Path) -> None:
    g = reference_guest
    assert g.dir.name == g.key and g.ready_marker == "corral-ready"
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", g.kernel_version)
    assert g.kernel_version.startswith("6.1.")
    assert "console=ttyS0" in g.cmdline and "root=/dev/vda" in g.cmdline

    vmlinux = g.vmlinux.read_bytes()
    assert pvh_entry(vmlinux) is not None
    assert any(name == b"Linux" for name, _, _ in elf_notes(vmlinux))
    assert g.bzimage.read_bytes()[0x202:0x206] == b"HdrS"

    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], stdin=g.initrd.open("rb"), capture_output=True, check=True
    ).stdout.decode()
    modules = {Path(p).stem for p in listing.split() if p.endswith(".ko")}
    # what readiness needs: the root disk, the seed CD, the NIC, the power button
    assert {"virtio_pci", "virtio_blk", "ext4", "jbd2", "button", "evdev"} <= modules
    assert {"virtio_net", "net_failover", "failover", "isofs"} <= modules
    assert {"init", "bin/busybox", "dev/console", "modules.load"} <= set(listing.split())
    ext4 = subprocess.run(
        ["cpio", "-i", "--quiet", "--to-stdout", "lib/modules/ext4.ko"],
        stdin=g.initrd.open("rb"),
        capture_output=True,
        check=True,
    ).stdout
    assert ext4.startswith(b"\x7fELF") and not ext4.endswith(b"~Module signature appended~\n")

    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(g.rootdisk)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 512 * 1024 * 1024
    assert "backing-filename" not in info

    manifest = json.loads((g.dir / "manifest.json").read_text())
    assert manifest["key"] == g.key and manifest["kernel_version"] == g.kernel_version
    # The CD-ROM and USB drivers, loaded after ready, each after what it depends on.
    later = manifest["modules_after_ready"]
    assert {"ata_piix", "sr_mod", "xhci_pci", "usbhid", "usb_storage"} <= set(later)
    assert later.index("scsi_mod") < later.index("sr_mod") < len(later)
    assert {p["name"] for p in manifest["packages"]} >= {"busybox-static", *PROGRAM_PACKAGES}

    # the root disk has the modules with a modules.dep (modprobe works) and /etc/modules
    raw = tmp_path / "root.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(g.rootdisk), str(raw)], check=True
    )

    def debugfs(request: str) -> bytes:
        return subprocess.run(
            ["debugfs", "-R", request, str(raw)], capture_output=True, check=True
        ).stdout

    def cat(path: str) -> str:
        return debugfs(f"cat {path}").decode()

    def inode(path: str) -> tuple[str, int]:
        """The inode's type (``regular``, ``directory``, ``symlink``) and permission bits."""
        match = re.search(rb"Type: (\w+)\s+Mode:\s+(0\d+)", debugfs(f"stat {path}"))
        assert match, path
        return match.group(1).decode(), int(match.group(2), 8)

    depends = cat(f"/lib/modules/{g.kernel_version}/modules.dep")
    assert "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko" in depends
    assert "kernel/fs/ext4/ext4.ko: " in depends
    assert re.findall(r"^(\w+)$", cat("/etc/modules"), re.MULTILINE) == [
        "ata_piix",
        "sr_mod",
        "xhci_pci",
        "usbhid",
        "hid_generic",
        "usb_storage",
        "sd_mod",
    ]

    def listing(directory: str) -> list[str]:
        # ls -p: /inode/mode/uid/gid/name/size/ per entry
        lines = debugfs(f"ls -p {directory}").decode().splitlines()
        return sorted(line.split("/")[5] for line in lines if line.startswith("/"))

    # the SSH server: dropbear's programs and only the libraries they load, under the names
    # they are loaded by (symbolic links, as in the packages, to versioned files)
    sonames = {
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libcrypt.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1",
        "/usr/lib/x86_64-linux-gnu/libtommath.so.1",
        "/usr/lib/x86_64-linux-gnu/libgmp.so.10",
        "/lib/x86_64-linux-gnu/libext2fs.so.2",
        "/lib/x86_64-linux-gnu/libe2p.so.2",
        "/lib/x86_64-linux-gnu/libcom_err.so.2",
    }
    staged_programs = set(manifest["programs"])
    versioned = {f for f in staged_programs if re.search(r"\.so\.\d+\.\d+", f)}
    programs = {
        "/usr/sbin/dropbear",
        "/usr/bin/dropbearkey",
        "/usr/lib/sftp-server",  # a link, as in the package, to OpenSSH's SFTP server
        "/usr/lib/openssh/sftp-server",
        "/sbin/resize2fs",  # the root file system grows to the disk
    }
    assert staged_programs - versioned == programs | sonames
    assert all(any(f.startswith(s + ".") for s in sonames) for f in versioned), versioned
    dropbear = debugfs("cat /usr/sbin/dropbear")
    assert set(dynamic_linking(dropbear).needed) == {
        "libtomcrypt.so.1",
        "libtommath.so.1",
        "libz.so.1",
        "libcrypt.so.1",
        "libc.so.6",
    }
    assert inode("/usr/sbin/dropbear") == inode("/usr/bin/dropbearkey") == ("regular", 0o755)
    assert inode("/lib64/ld-linux-x86-64.so.2")[0] == "symlink"
    assert inode("/usr/lib/sftp-server")[0] == "symlink"
    assert inode("/usr/lib/openssh/sftp-server") == ("regular", 0o755)
    assert "dbclient" not in listing("/usr/bin")
    assert listing("/etc/dropbear") == [".", ".."]  # no host key: each VM makes its own
    assert inode("/root/.ssh") == ("directory", 0o700)
    assert inode("/usr/lib/corral/nocloud.awk") == ("regular", 0o644)
    assert inode("/sbin/corral-nocloud") == ("regular", 0o755)
    assert inode("/etc/udhcpc/default.script") == ("regular", 0o755)


def test_cached_build_is_fast_and_runs_nothing(
    reference_guest: ReferenceGuest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached build must not run anything")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    started = time.monotonic()
    again = build_reference_guest(reference_guest.dir.parent.parent)
    elapsed = time.monotonic() - started
    assert again == reference_guest
    assert elapsed < 0.5, f"cached build took {elapsed:.3f} s"


def test_rebuild_is_reproducible_and_offline(
    reference_guest: ReferenceGuest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second cache with the same pins and .debs rebuilds byte-identical files, without apt."""
    source = reference_guest.dir.parent
    cache = tmp_path / "cache"
    (cache / "guest" / "debs").mkdir(parents=True)
    shutil.copy(source / "packages.json", cache / "guest" / "packages.json")
    for deb in (source / "debs").glob("*.deb"):
        (cache / "guest" / "debs" / deb.name).hardlink_to(deb)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text("#!/bin/sh\necho 'apt-get must not run' >&2\nexit 1\n")
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin")

    rebuilt = build_reference_guest(cache)
    assert rebuilt.key == reference_guest.key
    for name in ("bzImage", "vmlinux", "initrd.img", "root.qcow2"):
        assert sha256(rebuilt.dir / name) == sha256(reference_guest.dir / name), name
    assert cached_reference_guest(cache) == rebuilt


# -- booting ---------------------------------------------------------------------------------


@pytest.mark.tcg
def test_boots_to_ready_with_heartbeats(boot: Boot) -> None:
    vm = boot()
    seconds = vm.wait_ready(BOOT_DEADLINE)
    print(f"\nboot to ready: {seconds:.2f} s")
    first = vm.wait_for(rf"^{HEARTBEAT_PREFIX} \d+\.\d+$", 10)
    vm.wait_for(rf"^{HEARTBEAT_PREFIX} \d+\.\d+$", 10, after=first.end())
    beats = heartbeats(vm.log())
    assert len(beats) >= 2 and beats == sorted(beats)
    assert 0.5 < beats[1] - beats[0] < 3.0
    assert vm.log().count("corral-ready") == 1
    assert "Kernel panic" not in vm.log()
    # the console shell works and runs as root on the real root disk
    out = vm.shell("id -u; hostname; mount | grep ' / '; grep -c ' /bin/busybox ' /proc/mounts")
    assert out.splitlines()[:2] == ["0", "corral-guest"]
    assert "/dev/vda on / type ext4 (rw" in out
    # the initramfs's busybox, bind-mounted over the root disk's identical copy
    assert out.splitlines()[-1] == "1"
    # heartbeats start a line even when the shell left its prompt unfinished
    mark = len(vm.log())
    vm.wait_for(rf"^{HEARTBEAT_PREFIX} \d+\.\d+$", 10, after=mark)
    text = vm.log()
    assert text.count(HEARTBEAT_PREFIX) == len(heartbeats(text))


@pytest.mark.tcg
def test_network_and_seed_modules_are_loaded_before_ready(boot: Boot) -> None:
    """virtio-net and ISO 9660 come from the initramfs; at corral-ready eth0 has its address.

    The NIC is user-mode networking with ``restrict=on``: the guest cannot reach outside.
    Without a seed the guest asks DHCP for eth0's address.
    """
    vm = boot(nic=True)
    vm.wait_ready(BOOT_DEADLINE)
    out = vm.shell(
        "for d in /sys/module/virtio_net /sys/module/isofs /sys/class/net/eth0; "
        "do [ -d $d ] && echo $d; done; ip -4 -o addr show eth0 | grep -o 'inet [0-9./]*'; "
        "modprobe -a virtio_net isofs && echo modprobe-ok"
    )
    assert out.splitlines() == [
        "/sys/module/virtio_net",
        "/sys/module/isofs",
        "/sys/class/net/eth0",
        "inet 10.0.2.15/24",
        "modprobe-ok",
    ]
    assert "corral-rcS: warning" not in vm.log()


@pytest.mark.tcg
def test_writes_persist_across_guest_reboot(boot: Boot) -> None:
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    vm.shell("echo kept-$((6*7)) > /root/f")
    mark = len(vm.log())
    vm.type("reboot\n")
    vm.wait_for(rf"^{REBOOT_MARKER}$", EXIT_DEADLINE, after=mark)
    vm.wait_ready(BOOT_DEADLINE, after=mark)
    assert vm.shell("cat /root/f") == "kept-42"
    assert "recover" not in vm.shell("dmesg | grep EXT4-fs")  # it was shut down cleanly


@pytest.mark.tcg
def test_init_driven_reboot_also_shuts_down_cleanly(boot: Boot) -> None:
    """``busybox reboot`` (not the shell alias) goes through init's shutdown action."""
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    vm.shell("echo via-init-$((6*7)) > /root/i")
    mark = len(vm.log())
    vm.type("/bin/busybox reboot\n")
    vm.wait_for(rf"^{SHUTDOWN_MARKER}$", EXIT_DEADLINE, after=mark)
    vm.wait_ready(BOOT_DEADLINE, after=mark)
    assert vm.shell("cat /root/i") == "via-init-42"
    assert "recover" not in vm.shell("dmesg | grep EXT4-fs")


@pytest.mark.tcg
def test_writes_persist_across_system_reset_after_sync(boot: Boot) -> None:
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    vm.shell("echo synced-$((6*7)) > /root/g; sync")
    mark = len(vm.log())
    vm.qmp("system_reset")
    vm.wait_ready(BOOT_DEADLINE, after=mark)
    assert vm.shell("cat /root/g") == "synced-42"


@pytest.mark.tcg
def test_powerdown_exits_cleanly_and_keeps_writes(
    boot: Boot, reference_guest: ReferenceGuest, tmp_path: Path
) -> None:
    base_before = sha256(reference_guest.rootdisk)
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    vm.shell("echo powered-$((6*7)) > /root/h")
    mark = len(vm.log())
    vm.qmp("system_powerdown")
    started = time.monotonic()
    assert vm.wait_exit(EXIT_DEADLINE) == 0
    print(f"\npowerdown to exit: {time.monotonic() - started:.2f} s")
    assert re.search(rf"^{POWEROFF_MARKER}$", vm.log()[mark:], re.MULTILINE)

    # the overlay holds a clean file system with the file; the base image is untouched
    raw = tmp_path / "root.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(vm.overlay), str(raw)], check=True
    )
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], check=False, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(
        ["debugfs", "-R", "cat /root/h", str(raw)], capture_output=True, text=True, check=True
    )
    assert cat.stdout.strip() == "powered-42"
    assert sha256(reference_guest.rootdisk) == base_before
    manifest = json.loads((reference_guest.dir / "manifest.json").read_text())
    assert manifest["files"]["root.qcow2"] == base_before


@pytest.mark.tcg
def test_powerdown_with_a_busy_writer(boot: Boot) -> None:
    """A process holding a file open for writing on / is stopped so / can go read-only."""
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    vm.shell("(sleep 600 > /root/busy &)")
    vm.qmp("system_powerdown")
    assert vm.wait_exit(EXIT_DEADLINE) == 0
    assert re.search(rf"^{POWEROFF_MARKER}$", vm.log(), re.MULTILINE)
    assert "stays read-write" not in vm.log()


@pytest.mark.tcg
def test_guest_clock_stops_while_paused(boot: Boot) -> None:
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    last = vm.wait_for(rf"^{HEARTBEAT_PREFIX} (\d+\.\d+)$", 10)
    vm.qmp("stop")
    paused_at = time.monotonic()
    frozen = len(vm.log())
    # an observation window: no heartbeat may appear while paused
    with pytest.raises(GuestError):
        vm.wait_for(HEARTBEAT_PREFIX, 2.5, after=frozen)
    vm.qmp("cont")
    paused = time.monotonic() - paused_at
    after = vm.wait_for(rf"^{HEARTBEAT_PREFIX} (\d+\.\d+)$", 10, after=frozen)
    before_up = heartbeats(vm.log()[:frozen])[-1]
    gap = float(after.group(1)) - before_up
    assert paused > 2.5
    assert gap < 2.0, f"guest uptime advanced {gap:.2f} s over a {paused:.2f} s pause"
    del last


@pytest.mark.tcg
def test_without_root_disk_the_initramfs_says_so_and_powers_off(boot: Boot) -> None:
    vm = boot(root_disk=False)
    assert vm.wait_exit(BOOT_DEADLINE) == 0
    assert f"{INITRAMFS_ERROR_PREFIX} no root device /dev/vda" in vm.log()


@pytest.mark.tcg
def test_overlay_stays_small(boot: Boot) -> None:
    """Booting writes little to the overlay (no lazy inode-table init in the guest)."""
    vm = boot()
    vm.wait_ready(BOOT_DEADLINE)
    vm.qmp("system_powerdown")
    vm.wait_exit(EXIT_DEADLINE)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(vm.overlay)], capture_output=True, check=True
        ).stdout
    )
    assert info["actual-size"] < 8 * 1024 * 1024, info


@pytest.mark.tcg
def test_heartbeat_can_be_turned_off(boot: Boot, reference_guest: ReferenceGuest) -> None:
    vm = boot(cmdline=f"{reference_guest.cmdline} corral.heartbeat=0")
    vm.wait_ready(BOOT_DEADLINE)
    assert vm.shell("echo up") == "up"
    # an observation window: no heartbeat may appear
    with pytest.raises(GuestError):
        vm.wait_for(HEARTBEAT_PREFIX, 2.5)
