"""``corral launch`` and ``corral ssh`` as a user types them: real QEMU, real OpenSSH client.

Each test gets its own state directory and ``$HOME`` (key pairs are written to
``~/.ssh``), and removes its instances. The guest's network is user-mode NAT; with
``--isolated`` it reaches nothing outside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.compute.context import Corral
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests.integration.conftest import cli

pytestmark = [pytest.mark.tcg, pytest.mark.slow]


class User:
    """A user with their own ``$HOME`` and corral state directory, typing ``corral``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.state = root / "state"
        self.home.mkdir()

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return cli(self.state, *args, timeout=timeout, env_home=self.home)

    def ok(self, *args: str, timeout: float = 300) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"corral {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def fails(self, *args: str, status: int = 1) -> str:
        result = self.run(*args)
        assert result.returncode == status, (
            f"corral {' '.join(args)} exited {result.returncode}, not {status}:\n"
            f"{result.stdout}{result.stderr}"
        )
        return result.stderr

    def vms(self) -> list[str]:
        return sorted(v["name"] for v in json.loads(self.ok("list", "--all", "--json")))

    def vm_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.state / "vms").iterdir())

    def cleanup(self) -> None:
        for name in self.vms():
            self.run("destroy", name)
            self.run("delete", name)


def wait_for_console(log: Path, text: str, timeout: float = 60.0) -> None:
    """Wait (polling the serial log, with a deadline) until the guest prints ``text``."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not on the console within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def user() -> Iterator[User]:
    root = Path(tempfile.mkdtemp(prefix="cl-", dir="/tmp"))
    person = User(root)
    ctx = Corral(Home(person.state))
    ensure_reference(ctx)
    ctx.close()
    yield person
    person.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def test_acceptance(user: User) -> None:
    """The issue's acceptance sequence, as written, then what a user does next."""
    created = user.ok("key", "create", "k1")
    key = user.home / ".ssh" / "corral-k1"
    assert str(key) in created
    assert key.stat().st_mode & 0o777 == 0o600

    out = user.ok("launch", "web", "--image", "reference", "--type", "t1.micro", "--key", "k1")
    assert "ssh" in out and "127.0.0.1" in out

    result = user.run("ssh", "web", "--", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "web"

    uname = user.ok("ssh", "web", "--", "uname", "-a")
    assert uname.startswith("Linux web ")

    # The printed ssh command works as it is, with the host key corral learned.
    view = json.loads(user.ok("info", "web", "--json"))
    assert view["instance_type"] == "t1.micro"
    assert view["keypair"] == "k1"
    known = (user.state / "vms" / "web" / "known_hosts").read_text()
    assert known.startswith("web.corral ssh-ed25519 ")
    printed = user.ok("ssh", "web", "--print").strip()
    assert "StrictHostKeyChecking=yes" in printed
    direct = subprocess.run(
        [*printed.split(), "--", "cat", "/var/lib/cloud/instance-id"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
        env=dict(os.environ, HOME=str(user.home)),
    )
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.strip() == view["instance_id"]

    # Files both ways with scp (the guest's SSH server runs OpenSSH's SFTP server).
    local = user.root / "note.txt"
    local.write_text("from the host\n")
    user.ok("scp", str(local), "web:/tmp/note.txt")
    assert user.ok("ssh", "web", "--", "cat", "/tmp/note.txt") == "from the host\n"
    back = user.root / "hostname.txt"
    user.ok("scp", "web:/etc/hostname", str(back))
    assert back.read_text().strip() == "web"

    # The type's disk size, grown from the image's; the guest's root file system fills it.
    assert json.loads(user.ok("info", "web", "--json"))["disks"][0]["provisioned"] == 4 << 30
    df = user.ok("ssh", "web", "--", "df", "-k", "/").splitlines()[-1].split()
    assert 3_900_000 < int(df[1]) <= 4 << 20  # KiB: the 512 MiB image's ext4, grown to 4 GiB

    # The seed is a real ISO 9660 volume called cidata.
    iso = user.state / "vms" / "web" / "seed.iso"
    label = subprocess.run(
        ["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True
    ).stdout
    assert "Volume id: cidata" in label

    # The image in use cannot be deleted, and its listing counts the instance.
    images = json.loads(user.ok("image", "list", "--json"))
    assert next(i for i in images if i["name"] == "reference")["used_by"] == ["web"]
    assert "in use" in user.fails("image", "delete", "reference")

    user.ok("destroy", "web")
    user.ok("delete", "web")
    assert user.vm_dirs() == []


def test_wrong_key_is_refused(user: User) -> None:
    user.ok("key", "create", "right")
    user.ok("key", "create", "wrong")
    user.ok("launch", "guarded", "-i", "reference", "-t", "t1.nano", "-k", "right", "--isolated")
    wrong = str(user.home / ".ssh" / "corral-wrong")
    refused = user.run("ssh", "guarded", "-i", wrong, "--", "hostname")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    assert user.run("ssh", "guarded", "--", "true").returncode == 0


def test_count_three(user: User) -> None:
    user.ok("key", "create", "k")
    out = user.ok(
        "launch", "node", "-i", "reference", "-t", "t1.nano", "-k", "k", "-n", "3", "--json"
    )
    launched = json.loads(out)
    assert [i["name"] for i in launched] == ["node-1", "node-2", "node-3"]
    assert all(i["status"] == "ready" for i in launched)
    assert len({i["port"] for i in launched}) == 3
    assert len({i["instance_id"] for i in launched}) == 3
    for instance in launched:
        name = instance["name"]
        seen = user.ok("ssh", name, "--", "hostname;", "cat", "/var/lib/cloud/instance-id")
        assert seen.split() == [name, instance["instance_id"]]


def test_user_data_runs_and_bad_user_data_is_refused(user: User) -> None:
    user.ok("key", "create", "k")
    good = user.root / "good.yaml"
    good.write_text("#cloud-config\nruncmd:\n  - echo hello-from-runcmd > /root/greeting\n")
    user.ok("launch", "ud", "-i", "reference", "-t", "t1.nano", "-k", "k", "--user-data", str(good))
    # runcmd runs after the guest is ready, as cloud-init's final stage does; it says when done.
    wait_for_console(user.state / "vms" / "ud" / "serial.log", "runcmd finished, exit status 0")
    assert user.ok("ssh", "ud", "--", "cat", "/root/greeting").strip() == "hello-from-runcmd"

    bad = user.root / "bad.yaml"
    bad.write_text("#cloud-config\nruncmd: not-a-list\n")
    err = user.fails("launch", "bad", "-i", "reference", "-t", "t1.nano", "-k", "k",
                     "--user-data", str(bad))  # fmt: skip
    assert "user_data" in err and "runcmd" in err
    assert "bad" not in user.vms()
    assert user.vm_dirs() == ["ud"]


def test_refusals_leave_nothing(user: User) -> None:
    user.ok("key", "create", "k")
    base = ["-i", "reference", "-t", "t1.nano", "-k", "k"]
    assert "image 'nope' not found" in user.fails("launch", "a", "-i", "nope", "-t", "t1.nano",
                                                  "-k", "k", status=2)  # fmt: skip
    assert "instance type 'x9.huge' not found" in user.fails(
        "launch", "a", "-i", "reference", "-t", "x9.huge", "-k", "k", status=2
    )
    assert "key pair 'nokey' not found" in user.fails(
        "launch", "a", "-i", "reference", "-t", "t1.nano", "-k", "nokey", status=2
    )
    assert "name" in user.fails("launch", "Bad_Name", *base)
    assert "disk_size" in user.fails("launch", "a", *base, "--disk-size", "1M")
    (user.state / "instance-types.toml").write_text(
        '[[instance_type]]\nname = "x1.mem"\nvcpus = 1\nmemory = "2T"\ndisk = "4G"\n'
        'price_per_hour = "1"\n'
        '[[instance_type]]\nname = "x1.disk"\nvcpus = 1\nmemory = "256M"\ndisk = "60T"\n'
        'price_per_hour = "1"\n'
    )
    assert "not enough memory" in user.fails("launch", "a", "-i", "reference", "-t", "x1.mem",
                                             "-k", "k")  # fmt: skip
    assert "not enough disk" in user.fails("launch", "a", "-i", "reference", "-t", "x1.disk",
                                           "-k", "k")  # fmt: skip
    assert "not enough memory" in user.fails(
        "launch", "a", "-i", "reference", "-t", "t1.small", "-k", "k", "-n", "30"
    )
    assert user.vms() == []
    assert user.vm_dirs() == []
    # A name collision refuses the whole launch.
    user.ok("create", "b-2", "--image", "reference")
    assert "vm 'b-2' already exists" in user.fails("launch", "b", *base, "-n", "3")
    assert user.vms() == ["b-2"]


def test_never_ready_is_left_for_inspection(user: User) -> None:
    """A guest that never becomes ready: a clear error with its console, the VM kept."""
    ctx = Corral(Home(user.state))
    from corral.compute.images import get_image

    ref = get_image(ctx, "reference")
    ctx.close()
    assert ref.kernel is not None and ref.initrd is not None
    user.ok(
        "image", "import", "mute", ref.path, "--format", "qcow2",
        "--kernel", ref.kernel, "--initrd", ref.initrd, "--cmdline", ref.cmdline,
        "--ready-marker", "never-printed",
    )  # fmt: skip
    user.ok("key", "create", "k")
    err = user.fails("launch", "mute1", "-i", "mute", "-t", "t1.nano", "-k", "k",
                     "--timeout", "8", "--isolated")  # fmt: skip
    assert "not ready" in err and "never-printed" in err
    assert "corral-heartbeat" in err or "corral-ready" in err  # the console's last lines
    state = json.loads(user.ok("info", "mute1", "--json"))["state"]
    assert state == "running"
    user.ok("destroy", "mute1")
    user.ok("delete", "mute1")
    assert user.vm_dirs() == []
