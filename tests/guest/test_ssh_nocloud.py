"""The reference guest's SSH server and NoCloud reader, booted for real under QEMU (TCG).

The seed is made by corral's own code (``corral.cloudinit.render`` and ``seed``) and attached
as corral attaches it: a read-only virtio-blk disk. The NIC is QEMU's user-mode network with
``restrict=on`` (the guest reaches nothing outside) and the guest's port 22 forwarded from
``127.0.0.1``. The client is the real OpenSSH ``ssh``, with strict host key checking against
a known_hosts file built from the host key block on the serial console.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from guest_vm import NIC_MAC, GuestVM

from corral.cloudinit.render import SeedRequest, render_seed
from corral.cloudinit.seed import write_seed
from corral.guest import REBOOT_MARKER, ReferenceGuest

BOOT_DEADLINE = 60.0
EXIT_DEADLINE = 30.0

pytestmark = [pytest.mark.slow, pytest.mark.tcg]

Boot = Callable[..., GuestVM]


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("the OpenSSH client is not installed")
    directory = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("user", "stranger"):
        path = directory / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
            check=True,
        )
        pairs[name] = KeyPair(path, (directory / f"{name}.pub").read_text().strip())
    return pairs


def make_seed(path: Path, files: dict[str, bytes]) -> Path:
    write_seed(path, files)
    return path


def cloud_config(data: dict[str, object]) -> str:
    return "#cloud-config\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, width=2**31, allow_unicode=True
    )


def known_hosts(vm: GuestVM, path: Path, after: int = 0) -> list[str]:
    """Write ``path`` from the console's host key block; return the block's lines."""
    lines = vm.host_keys(after)
    assert vm.ssh_port is not None
    path.write_text(
        "".join(f"[127.0.0.1]:{vm.ssh_port} {' '.join(line.split()[:2])}\n" for line in lines)
    )
    return lines


def test_ssh_with_a_seed_from_corral(boot: Boot, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    user_data = cloud_config(
        {
            "runcmd": [
                "echo ran >> /root/runcmd-runs",
                ["cp", "/etc/corral test.conf", "/root/seen"],
            ],
            "write_files": [
                {
                    "path": "/etc/corral test.conf",
                    "content": "a = 1\nb = 'two' # \"three\"\n",
                    "permissions": "0640",
                }
            ],
        }
    )
    files = render_seed(
        SeedRequest(
            instance_id="i-0123456789abcdef",
            hostname="web-1",
            authorized_keys=(keys["user"].public,),
            user_data=user_data,
            nics=(("net0", NIC_MAC),),
        )
    )
    seed = make_seed(tmp_path / "seed.iso", files)
    vm = boot(seed=seed, nic=True)
    started = time.monotonic()
    vm.wait_ready(BOOT_DEADLINE)
    hosts = tmp_path / "known_hosts"
    block = known_hosts(vm, hosts)
    assert len(block) == 1 and re.fullmatch(r"ssh-ed25519 AAAA[\w+/=]+ root@web-1", block[0])
    summary = vm.wait_for(r"^corral-nocloud: seed /dev/vd\w.*$", 1).group(0)
    assert "instance i-0123456789abcdef (new), host name web-1" in summary
    assert "authorized keys added: 1" in summary and "eth0 10.0.2.15/24" in summary

    user = keys["user"].private
    out = vm.ssh("hostname", user, hosts)
    print(f"\nQEMU start to the first SSH command's answer: {time.monotonic() - started:.2f} s")
    assert (out.returncode, out.stdout) == (0, "web-1\n"), out.stderr
    out = vm.ssh("uname -a", user, hosts)
    assert out.returncode == 0 and out.stdout.startswith("Linux web-1 "), out.stderr

    refused = vm.ssh("hostname", keys["stranger"].private, hosts)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    vm.wait_for(r"^corral-nocloud: runcmd finished, exit status 0$", 30)
    out = vm.ssh(
        "cat /root/runcmd-runs /root/seen; stat -c '%a %U' '/etc/corral test.conf'; "
        "cat /var/lib/cloud/instance-id; stat -c '%a %U %n' /root/.ssh /root/.ssh/authorized_keys",
        user,
        hosts,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "ran",
        "a = 1",
        "b = 'two' # \"three\"",
        "640 root",
        "i-0123456789abcdef",
        "700 root /root/.ssh",
        "600 root /root/.ssh/authorized_keys",
    ]

    # an interactive session: a login shell on a pty
    out = vm.ssh("", user, hosts, tty=True, stdin="tty; echo shell=$0\nexit\n")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^/dev/pts/\d+\r?$", out.stdout, re.MULTILINE), out.stdout
    assert re.search(r"^shell=-sh\r?$", out.stdout, re.MULTILINE), out.stdout

    # a reboot: the same host key, the per-instance commands do not run again
    mark = len(vm.log())
    vm.type("reboot\n")
    vm.wait_for(rf"^{REBOOT_MARKER}$", EXIT_DEADLINE, after=mark)
    vm.wait_ready(BOOT_DEADLINE, after=mark)
    assert vm.host_keys(mark) == block
    summary = vm.wait_for(r"^corral-nocloud: seed .*$", 1, after=mark).group(0)
    assert "(known)" in summary and "authorized keys added" not in summary
    out = vm.ssh("cat /root/runcmd-runs; ls /run/corral-nocloud", user, hosts)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "ran" and "final" not in out.stdout.split()
    assert "runcmd finished" not in vm.log()[mark:]


def test_a_new_instance_id_on_the_same_disk(
    boot: Boot, reference_guest: ReferenceGuest, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    """The first boot's disk under a seed with another instance-id: per-instance work again."""

    def seed(instance_id: str, key: KeyPair, name: str) -> Path:
        user_data = cloud_config({"runcmd": [f"echo {instance_id} >> /root/runs"]})
        files = render_seed(
            SeedRequest(
                instance_id=instance_id,
                hostname=name,
                authorized_keys=(key.public,),
                user_data=user_data,
                nics=(("net0", NIC_MAC),),
            )
        )
        return make_seed(tmp_path / f"{instance_id}.iso", files)

    first = boot(seed=seed("i-first", keys["user"], "first"), nic=True)
    first.wait_ready(BOOT_DEADLINE)
    block = first.host_keys()
    first.wait_for(r"^corral-nocloud: runcmd finished, exit status 0$", 30)
    first.qmp("system_powerdown")
    assert first.wait_exit(EXIT_DEADLINE) == 0

    second = GuestVM(reference_guest, seed=seed("i-second", keys["stranger"], "second"), nic=True)
    try:
        shutil.copyfile(first.overlay, second.overlay)
        second.start()
        second.wait_ready(BOOT_DEADLINE)
        hosts = tmp_path / "known_hosts"
        assert known_hosts(second, hosts) == [block[0].replace("root@first", "root@second")]
        second.wait_for(r"^corral-nocloud: runcmd finished, exit status 0$", 30)
        # both keys are installed now; the instance-id is the new one; runcmd ran for each
        out = second.ssh(
            "hostname; cat /var/lib/cloud/instance-id /root/runs", keys["stranger"].private, hosts
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["second", "i-second", "i-first", "i-second"]
        assert second.ssh("true", keys["user"].private, hosts).returncode == 0
    finally:
        second.cleanup()


def test_a_user_data_script_and_static_addresses(
    boot: Boot, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    network = {
        "version": 2,
        "ethernets": {
            "nic": {
                "match": {"macaddress": NIC_MAC.upper()},
                "set-name": "eth0",
                "addresses": ["10.0.2.15/24"],
                "gateway4": "10.0.2.2",
                "nameservers": {"addresses": ["10.0.2.3"], "search": ["corral.test"]},
            }
        },
    }
    files = {
        "meta-data": yaml.safe_dump(
            {
                "instance-id": "i-script",
                "local-hostname": "scripted",
                "public-keys": [keys["user"].public],
            }
        ).encode(),
        "user-data": b'#!/bin/sh\necho "script ran as $(id -u)" >> /root/script-runs\nexit 3\n',
        "network-config": yaml.safe_dump(network).encode(),
    }
    vm = boot(seed=make_seed(tmp_path / "seed.iso", files), nic=True)
    vm.wait_ready(BOOT_DEADLINE)
    hosts = tmp_path / "known_hosts"
    known_hosts(vm, hosts)
    vm.wait_for(r"^corral-nocloud: user-data finished, exit status 3$", 30)
    out = vm.ssh(
        "cat /root/script-runs /etc/resolv.conf; ip -4 -o addr show eth0; ip route",
        keys["user"].private,
        hosts,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["script ran as 0", "search corral.test", "nameserver 10.0.2.3"]
    assert "inet 10.0.2.15/24" in lines[3]
    assert "default via 10.0.2.2 dev eth0" in out.stdout
    # no DHCP client runs for a static address
    assert vm.ssh("ls /run/udhcpc.eth0.pid", keys["user"].private, hosts).returncode != 0


def test_unsupported_user_data_is_ignored_with_a_warning(
    boot: Boot, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    files = render_seed(
        SeedRequest(
            instance_id="i-mime",
            hostname="mime",
            authorized_keys=(keys["user"].public,),
            user_data="Content-Type: multipart/mixed; boundary=x\nMIME-Version: 1.0\n\n--x--\n",
        )
    )
    vm = boot(seed=make_seed(tmp_path / "seed.iso", files))
    vm.wait_ready(BOOT_DEADLINE)
    text = vm.log()
    warnings = re.findall(r"^corral-nocloud: warning: .*$", text, re.MULTILINE)
    assert warnings == [
        "corral-nocloud: warning: user-data is neither #cloud-config nor a #! script: ignored"
    ]
    # the keys still arrive by meta-data; no NIC, so no network
    assert re.search(r"^corral-nocloud: seed .*, authorized keys added: 1, no network$", text, re.M)
    assert vm.shell("hostname; cat /var/lib/cloud/instance-id") == "mime\ni-mime"


def test_without_a_seed(boot: Boot, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    """No seed: the image's host name, DHCP on eth0, an SSH server nobody can log in to."""
    vm = boot(nic=True)
    vm.wait_ready(BOOT_DEADLINE)
    hosts = tmp_path / "known_hosts"
    block = known_hosts(vm, hosts)
    assert block[0].endswith(" root@corral-guest")
    assert re.search(
        r"^corral-nocloud: no seed, host name corral-guest, eth0 10\.0\.2\.15/24$", vm.log(), re.M
    )
    refused = vm.ssh("hostname", keys["user"].private, hosts)
    # the host key matched (strict checking passed); the key was refused
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    out = vm.shell("ls /var/lib/cloud; ls -A /root/.ssh | wc -l")
    assert out.splitlines() == ["scripts", "0"]
    # nothing the boot started keeps a file on / open for writing: a shutdown can remount
    # it read-only at once
    out = vm.shell("mount -o remount,ro / && echo read-only; mount -o remount,rw /")
    assert out == "read-only"
