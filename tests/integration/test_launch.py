"""``corral launch`` and ``corral ssh`` as a user types them: real QEMU, real OpenSSH client.

Each test gets its own state directory and ``$HOME`` (key pairs are written to
``~/.ssh``), and removes its instances. The guest's network is user-mode NAT; with
``--isolated`` it reaches nothing outside.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.compute.context import Corral
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests.integration.conftest import CORRAL, cli

pytestmark = [pytest.mark.tcg, pytest.mark.slow]


class User:
    """A user with their own ``$HOME`` and corral state directory, typing ``corral`` (at the
    local daemon, or with ``remote=(url, token)`` at a daemon over TCP)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.state = root / "state"
        self.home.mkdir()

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return cli(self.state, *args, timeout=timeout, env_home=self.home)

    def env(self, remote: tuple[str, str] | None = None) -> dict[str, str]:
        """The environment ``corral`` runs in (:func:`~tests.integration.conftest.cli`'s)."""
        env = dict(os.environ, CORRAL_HOME=str(self.state), HOME=str(self.home), COLUMNS="200")
        for name in ("CORRAL_URL", "CORRAL_TOKEN", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
            env.pop(name, None)
        if remote is not None:
            env["CORRAL_URL"], env["CORRAL_TOKEN"] = remote
        return env

    def remote(self, remote: tuple[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        """``corral`` at a daemon over TCP, with a token."""
        return subprocess.run(
            [CORRAL, *args],
            env=self.env(remote),
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def task(self, task_id: str, timeout: float = 180.0) -> dict[str, object]:
        """Task ``task_id`` once it has ended (asked every 0.2 s, within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, object] = json.loads(self.ok("task", "show", task_id, "--json"))
            if task["status"] in ("success", "error", "cancelled"):
                return task
            assert time.monotonic() < deadline, f"task still {task['status']}: {task}"
            time.sleep(0.2)

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

    launched = user.run("launch", "web", "--image", "reference", "--type", "t1.micro", "--key",
                        "k1")  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    out = launched.stdout
    assert "ssh" in out and "127.0.0.1" in out
    # Followed through the API: one line per phase as it ends (stderr is no terminal here).
    phases = [line.split()[:2] for line in launched.stderr.splitlines()]
    assert phases == [["web:", p] for p in ("clone", "seed", "start", "boot", "ready")]

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


def test_an_interrupted_launch_goes_on_and_no_wait_returns_once_qemu_runs(user: User) -> None:
    """Ctrl-C stops following the launch, not the launch; --no-wait returns once QEMU runs
    (the task still waits for SSH)."""
    user.ok("key", "create", "k")
    said = user.root / "launch.err"
    with said.open("w") as err:
        following = subprocess.Popen(
            [CORRAL, "launch", "bg", "-i", "reference", "-t", "t1.nano", "-k", "k"],
            env=user.env(),
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    deadline = time.monotonic() + 60
    while "bg: clone" not in said.read_text():
        assert following.poll() is None, said.read_text()
        assert time.monotonic() < deadline, "no clone line within 60 s"
        time.sleep(0.05)
    following.send_signal(signal.SIGINT)
    out, _ = following.communicate(timeout=60)
    assert following.returncode == 130, said.read_text()
    assert out == ""
    told = re.search(r"interrupted: the launch goes on as task ([0-9a-f-]{36})", said.read_text())
    assert told is not None, said.read_text()
    task = user.task(told[1])
    assert task["status"] == "success", task
    assert user.ok("ssh", "bg", "--", "hostname").strip() == "bg"

    base = ["-i", "reference", "-t", "t1.nano", "-k", "k"]
    launched = json.loads(user.ok("launch", "nw", *base, "--no-wait", "--json"))
    assert [(i["name"], i["status"], i["ssh"]) for i in launched] == [("nw", "running", None)]
    assert list(launched[0]["phases"]) == ["clone", "seed", "start"]
    assert isinstance(launched[0]["port"], int) and launched[0]["instance_id"].startswith("i-")
    tasks = json.loads(user.ok("task", "list", "--vm", "nw", "--json"))
    assert [t["name"] for t in tasks] == ["vm.launch"]
    assert user.task(tasks[0]["id"])["status"] == "success"  # it went on to wait for SSH
    assert user.ok("ssh", "nw", "--", "hostname").strip() == "nw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _token(printed: str) -> str:
    return next(word for word in printed.split() if word.startswith("crl_"))


def test_launch_and_ssh_through_a_daemon_over_tcp(user: User) -> None:
    """A client of a daemon over TCP launches and logs in: the host keys go to a known_hosts
    file of its own, checked strictly; another project's user is told the VM does not exist."""
    port = _free_port()
    user.ok("serve", "--bind", f"127.0.0.1:{port}", "--detach")
    url = f"http://127.0.0.1:{port}"
    user.ok("key", "create", "k")
    user.ok("project", "create", "p2")
    carol = (url, _token(user.ok("user", "create", "carol", "--role", "operator", "--project",
                                 "default", "--token")))  # fmt: skip
    dave = (url, _token(user.ok("user", "create", "dave", "--role", "operator", "--project",
                                "p2", "--token")))  # fmt: skip

    launched = user.remote(carol, "launch", "far", "-i", "reference", "-t", "t1.nano", "-k", "k")
    assert launched.returncode == 0, launched.stderr
    known = user.home / ".local" / "state" / "corral" / "known_hosts" / f"127.0.0.1-{port}" / "far"
    assert known.read_text().startswith("far.corral ssh-ed25519 AAAA")
    assert known.stat().st_mode & 0o777 == 0o600
    assert f"UserKnownHostsFile={known}" in launched.stdout
    printed = user.remote(carol, "ssh", "far", "--print")
    assert printed.returncode == 0, printed.stderr
    assert f"UserKnownHostsFile={known}" in printed.stdout
    assert "StrictHostKeyChecking=yes" in printed.stdout
    assert "ProxyJump" not in printed.stdout  # the daemon's host is this one
    assert str(user.home / ".ssh" / "corral-k") in printed.stdout
    hostname = user.remote(carol, "ssh", "far", "--", "hostname")
    assert hostname.returncode == 0, hostname.stderr
    assert hostname.stdout.strip() == "far"

    for verb in (["ssh", "far", "--", "hostname"], ["scp", "far:/etc/hostname", "/tmp/x"]):
        hidden = user.remote(dave, *verb)
        assert hidden.returncode == 2, hidden.stderr
        assert "vm 'far' not found" in hidden.stderr
