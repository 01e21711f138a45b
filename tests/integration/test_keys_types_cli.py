"""``corral key`` and ``corral type`` through the real command, in throw-away homes.

Each verb goes through the home's corrald (started by the first verb, stopped at the end):
key pairs are made on this side, and only public keys reach the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import daemons
from tests.integration.conftest import CORRAL

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


class Homes:
    """A corral state directory and a user home directory, both temporary."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.user = root / "user"
        self.user.mkdir()
        self.state.mkdir(mode=0o700)

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            CORRAL_HOME=str(self.state),
            CORRAL_CACHE=str(self.state / "cache"),
            HOME=str(self.user),
            COLUMNS="200",
        )
        try:
            return subprocess.run(
                [CORRAL, *args],
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            daemons.note(self.state)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"corral {' '.join(args)}: {result.stderr}"
        return result.stdout

    def refused(self, *args: str, status: int = 1) -> str:
        """The one line of error output; the exit status is checked."""
        result = self.run(*args)
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        return lines[0]

    def key_names(self) -> list[str]:
        return [k["name"] for k in json.loads(self.ok("key", "list", "--json"))]


@pytest.fixture
def homes() -> Iterator[Homes]:
    """Homes under a short path (the daemon's socket is in the state directory); its daemon
    is stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ck-", dir="/tmp"))
    made = Homes(root)
    yield made
    daemons.stop(made.state)
    shutil.rmtree(root, ignore_errors=True)


@needs_keygen
def test_key_create_show_and_refuse_again(homes: Homes) -> None:
    out = homes.ok("key", "create", "web")
    private = homes.user / ".ssh" / "corral-web"
    assert f"private key: {private}" in out
    assert "does not keep the private key" in out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    shown = json.loads(homes.ok("key", "show", "web", "--json"))
    assert shown["public_key"].split()[:2] == derived
    assert shown["private_key_path"] == str(private)
    assert shown["fingerprint"] in out
    keygen = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{private}.pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert keygen.split()[1] == shown["fingerprint"]
    text = homes.ok("key", "show", "web")
    assert f"Public key:  {shown['public_key']}" in text

    before = private.read_bytes()
    assert homes.refused("key", "create", "web") == "error: key pair 'web' already exists"
    homes.ok("key", "delete", "web")
    line = homes.refused("key", "create", "web")
    assert f"{private} already exists" in line
    assert "--out" in line
    assert private.read_bytes() == before
    assert homes.key_names() == []
    other = homes.user / "elsewhere"
    homes.ok("key", "create", "web", "--out", str(other))
    assert stat.S_IMODE(other.stat().st_mode) == 0o600
    assert homes.key_names() == ["web"]


@needs_keygen
def test_key_import_list_delete(homes: Homes, tmp_path: Path) -> None:
    key = tmp_path / "id_ecdsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-C", "me@laptop", "-f", str(key)],
        check=True,
    )
    out = homes.ok("key", "import", "laptop", f"{key}.pub")
    assert f"private key: {key}" in out

    line = homes.refused("key", "import", "secret", str(key))
    assert line.startswith(f"error: {key}: this is a private key")
    assert ".pub" in line
    assert homes.key_names() == ["laptop"]

    homes.ok("key", "import", "piped", "-", stdin=(tmp_path / "id_ecdsa.pub").read_text())
    key.chmod(0o644)
    result = homes.run("key", "import", "loose", f"{key}.pub", "--private-key", str(key))
    assert result.returncode == 0
    assert "warning:" in result.stderr
    assert "chmod 600" in result.stderr

    listed = json.loads(homes.ok("key", "list", "--json"))
    assert [k["name"] for k in listed] == ["laptop", "loose", "piped"]
    assert {k["kind"] for k in listed} == {"ecdsa-sha2-nistp256"}
    assert [k["private_key_path"] for k in listed] == [str(key), str(key), None]
    table = homes.ok("key", "list")
    assert "Fingerprint" in table
    assert listed[0]["fingerprint"] in table

    out = homes.ok("key", "delete", "laptop")
    assert f"private key file {key} was left in place" in out
    assert key.exists()
    assert homes.key_names() == ["loose", "piped"]
    assert homes.refused("key", "show", "laptop", status=2) == "error: key pair 'laptop' not found"


def test_key_import_refusals(homes: Homes, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pub"
    empty.write_text("")
    assert "is empty" in homes.refused("key", "import", "k", str(empty))
    dsa = tmp_path / "dsa.pub"
    dsa.write_text("ssh-dss AAAAB3NzaC1kc3MAAACBAP8= me\n")
    assert "DSA" in homes.refused("key", "import", "k", str(dsa))
    line = homes.refused("key", "import", "Bad/Name", str(dsa))
    assert line.startswith("error: name: 'Bad/Name' is not allowed")
    line = homes.refused("key", "import", "k", str(tmp_path / "missing.pub"))
    assert line.startswith("error: file: ")
    assert homes.key_names() == []


def test_type_list(homes: Homes) -> None:
    types = json.loads(homes.ok("type", "list", "--json"))
    micro = next(t for t in types if t["name"] == "t1.micro")
    assert micro["vcpus"] == 1
    assert micro["memory"] == 512 * 1024**2
    assert micro["price_per_hour"] == "0.0058"
    assert micro["price_per_month"] == "4.23"
    assert micro["source"] == "shipped"
    table = homes.ok("type", "list")
    assert "t1.micro" in table
    assert "0.0058 USD" in table
    assert "512 MiB" in table

    path = homes.state / "instance-types.toml"
    path.write_text(
        '[[instance_type]]\nname = "db.large"\nvcpus = 4\nmemory = "8G"\ndisk = "100G"\n'
        'price_per_hour = "0.20"\ndescription = "Database"\n'
    )
    names = [t["name"] for t in json.loads(homes.ok("type", "list", "--json"))]
    assert "db.large" in names
    assert "instance-types.toml" in homes.ok("type", "list")

    path.write_text(path.read_text().replace('"8G"', '"lots"'))
    line = homes.refused("type", "list")
    assert line.startswith(f"error: {path}: entry 1 (db.large): memory: 'lots' is not a size")
    path.write_text("[[instance_type]\n")
    line = homes.refused("type", "list")
    assert line.startswith(f"error: {path}: is not valid TOML")
