"""``corral image`` and ``corral key`` through the real command and a real corrald: over the
UNIX socket (the daemon reads the image file itself) and over TCP with a token (the file is
uploaded; key pairs are made on this side and only their public keys sent)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.cli.image import JSON_FIELDS
from tests import daemons
from tests.integration.conftest import CORRAL

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


@dataclass
class Site:
    """A state directory whose corrald also listens on TCP, and a user's home directory."""

    root: Path
    home: Path
    user: Path
    url: str
    token: str = ""

    def run(self, *args: str, remote: bool = False) -> subprocess.CompletedProcess[str]:
        """``corral ARGS`` on the UNIX socket, or with ``remote`` as alice over TCP."""
        env = dict(os.environ, CORRAL_HOME=str(self.home), HOME=str(self.user), COLUMNS="200")
        env.pop("XDG_CONFIG_HOME", None)
        env.pop("CORRAL_URL", None)
        env.pop("CORRAL_TOKEN", None)
        if remote:
            env.update(CORRAL_URL=self.url, CORRAL_TOKEN=self.token)
        try:
            return subprocess.run(
                [CORRAL, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            daemons.note(self.home)

    def ok(self, *args: str, remote: bool = False) -> str:
        result = self.run(*args, remote=remote)
        assert result.returncode == 0, f"corral {' '.join(args)}: {result.stderr}"
        return result.stdout

    def refused(self, *args: str, status: int = 1, remote: bool = False) -> str:
        """The one line of error output; the exit status is checked."""
        result = self.run(*args, remote=remote)
        assert result.returncode == status, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="cq-", dir="/tmp"))
    (root / "user").mkdir()
    port = free_port()
    made = Site(root, root / "home", root / "user", f"http://127.0.0.1:{port}")
    try:
        made.ok("serve", "--bind", f"127.0.0.1:{port}", "--detach")
        made.ok("project", "create", "p1")
        out = made.ok("user", "create", "alice", "--role", "operator", "--project", "p1", "--token")
        made.token = next(word for word in out.split() if word.startswith("crl_"))
        yield made
    finally:
        daemons.stop(made.home)
        shutil.rmtree(root, ignore_errors=True)


def qcow2(site: Site, name: str, size: str = "64M") -> Path:
    path = site.root / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def test_image_verbs_on_the_local_socket(site: Site) -> None:
    source = qcow2(site, "local.qcow2")
    out = site.ok("image", "import", "local", str(source), "--os", "debian 12")
    assert out.startswith("image local imported from qcow2: 64 MiB virtual, ")
    assert out.strip().endswith(" on disk")
    [image] = [i for i in json.loads(site.ok("image", "list", "--json")) if i["name"] == "local"]
    assert list(image) == list(JSON_FIELDS)
    assert image["ssh_user"] == "debian" and image["project"] == "default"
    info = json.loads(site.ok("image", "info", "local", "--json"))
    assert info == image
    table = site.ok("image", "list")
    assert "local" in table and "debian 12" in table and "firmware" in table
    assert "Login user" in site.ok("image", "info", "local")
    out = site.ok("image", "update", "local", "--ssh-user", "admin", "--ready-marker", "READY")
    assert "login admin" in out and "ready marker READY" in out
    assert json.loads(site.ok("image", "info", "local", "--json"))["ssh_user"] == "admin"
    assert site.ok("image", "delete", "local").strip() == "image local deleted"
    assert site.refused("image", "info", "local", status=2) == "error: image 'local' not found"


def test_import_refusals_leave_nothing(site: Site) -> None:
    missing = site.root / "missing.img"
    line = site.refused("image", "import", "gone", str(missing))
    assert line == f"error: {missing}: does not exist"
    corrupt = qcow2(site, "corrupt.qcow2")
    with corrupt.open("r+b") as f:  # point the L1 table far outside the file
        f.seek(40)
        f.write((1 << 62).to_bytes(8, "big"))
    assert str(corrupt) in site.refused("image", "import", "bad", str(corrupt))
    assert "upload of image 'bad'" in site.refused(
        "image", "import", "bad", str(corrupt), "--project", "p1", remote=True
    )
    names = [i["name"] for i in json.loads(site.ok("image", "list", "--json"))]
    assert "bad" not in names and "gone" not in names
    images = site.home / "images"
    assert not (images / "bad").exists()
    assert list((images / ".uploads").glob("*")) == []
    # A remote daemon is sent the disk only: its host's boot files are not this machine's.
    line = site.refused("image", "import", "k", str(corrupt), "--kernel", str(corrupt), remote=True)
    assert line.startswith("error: kernel: ") and "not on this machine" in line


def test_image_import_over_tcp_uploads_the_file(site: Site) -> None:
    source = site.root / "remote.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(source), "32M"], check=True)
    out = site.ok("image", "import", "remote", str(source), "--project", "p1", remote=True)
    assert out.startswith("image remote imported from vmdk: 32 MiB virtual")
    listed = json.loads(site.ok("image", "list", "--json", remote=True))
    assert [i["name"] for i in listed] == ["remote"]  # alice sees p1's images only
    assert listed[0]["project"] == "p1"
    assert listed[0]["path"].startswith(str(site.home / "images" / "remote"))
    line = site.refused(
        "image", "import", "again", str(source), "--project", "p2", remote=True, status=2
    )
    assert line == "error: project 'p2' not found"


def test_key_create_over_tcp_keeps_the_private_key_here(site: Site) -> None:
    out = site.ok("key", "create", "alice-key", "--project", "p1", remote=True)
    private = site.user / ".ssh" / "corral-alice-key"
    assert f"private key: {private}" in out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    shown = json.loads(site.ok("key", "show", "alice-key", "--json", remote=True))
    assert shown["private_key_path"] == str(private) and shown["project"] == "p1"
    assert private.read_text().split("\n")[1] not in (site.home / "corral.db").read_text(
        errors="replace"
    )
    # The daemon refuses (no such project for alice): the files just written are removed.
    line = site.refused("key", "create", "lost", "--project", "p2", remote=True, status=2)
    assert line == "error: project 'p2' not found"
    assert not (site.user / ".ssh" / "corral-lost").exists()
    assert not (site.user / ".ssh" / "corral-lost.pub").exists()
    out = site.ok("key", "delete", "alice-key", remote=True)
    assert f"private key file {private} was left in place" in out
    assert private.exists()
