"""Logging in from the client's machine: where to connect, which host keys and private key, for
a local daemon (its UNIX socket) and a remote one (a URL)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from corral.api.schemas.launch import SshAccessRead
from corral.client.ssh import known_hosts_file, private_key, remote_host, target
from corral.compute.sshcmd import keys_of_known_hosts, scp_argv, ssh_argv
from corral.errors import InvalidInput

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``$HOME`` of the test's own, with no ``$XDG_STATE_HOME``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def access(**changes: object) -> SshAccessRead:
    fields: dict[str, object] = {
        "vm": "web",
        "user": "root",
        "address": "127.0.0.1",
        "port": 2201,
        "keypair": None,
        "identity": None,
        "host_key_alias": "web.corral",
        "host_keys": [ED],
        "known_hosts": "/state/vms/web/known_hosts",
    }
    return SshAccessRead.model_validate(fields | changes)


def test_remote_host() -> None:
    assert remote_host("/state/corrald.sock") is None
    assert remote_host("http://10.0.0.5:8140") == ("10.0.0.5", 8140)
    assert remote_host("https://corral.example") == ("corral.example", 443)
    assert remote_host("http://[::1]:8140/") == ("::1", 8140)


def test_a_local_daemon_lends_its_known_hosts_file() -> None:
    found = target(access(), "/state/corrald.sock")
    assert (found.host, found.port, found.user) == ("127.0.0.1", 2201, "root")
    assert found.known_hosts == "/state/vms/web/known_hosts"
    assert found.keys_known and found.jump is None
    argv = ssh_argv(found)
    assert "StrictHostKeyChecking=yes" in argv
    assert not any(a.startswith("ProxyJump") for a in argv)
    wildcard = target(access(address="0.0.0.0", host_keys=[]), "/s.sock", user="debian")
    assert (wildcard.host, wildcard.user, wildcard.keys_known) == ("127.0.0.1", "debian", False)
    assert "StrictHostKeyChecking=accept-new" in ssh_argv(wildcard)


def test_a_remote_daemon_gets_a_known_hosts_file_of_the_clients(home: Path) -> None:
    found = target(access(host_keys=[ED, RSA]), "http://10.0.0.5:8140")
    file = home / ".local" / "state" / "corral" / "known_hosts" / "10.0.0.5-8140" / "web"
    assert found.known_hosts == str(file) == str(known_hosts_file("10.0.0.5", 8140, "web"))
    assert file.read_text() == f"web.corral {ED}\nweb.corral {RSA}\n"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert found.keys_known
    # The forward listens on the daemon's loopback: reached through the daemon's host.
    assert (found.host, found.jump) == ("127.0.0.1", "10.0.0.5")
    argv = ssh_argv(found, ["hostname"])
    assert "ProxyJump=10.0.0.5" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[-3:] == ["root@127.0.0.1", "--", "hostname"]
    assert "ProxyJump=10.0.0.5" in scp_argv(found, ["a"], ":/tmp/a")
    # New keys (a reinstalled guest) replace the old ones.
    target(access(host_keys=[RSA]), "http://10.0.0.5:8140")
    assert file.read_text() == f"web.corral {RSA}\n"


def test_a_remote_daemon_on_this_machine_or_a_wildcard_forward_needs_no_jump() -> None:
    here = target(access(), "http://127.0.0.1:8140")
    assert (here.host, here.jump) == ("127.0.0.1", None)
    wide = target(access(address="0.0.0.0"), "https://corral.example:8443")
    assert (wide.host, wide.jump) == ("corral.example", None)
    lan = target(access(address="192.168.1.7"), "https://corral.example:8443")
    assert (lan.host, lan.jump) == ("192.168.1.7", None)


def test_without_console_keys_what_a_first_connection_learned_stays(home: Path) -> None:
    first = target(access(host_keys=[]), "http://10.0.0.5:8140")
    assert not first.keys_known
    assert "StrictHostKeyChecking=accept-new" in ssh_argv(first)
    learned = Path(first.known_hosts)
    learned.write_text(f"|1|c2FsdA==|aGFzaA== {ED}\n")  # what ssh appends, hashed
    again = target(access(host_keys=[]), "http://10.0.0.5:8140")
    assert again.keys_known
    assert learned.read_text() == f"|1|c2FsdA==|aGFzaA== {ED}\n"


def test_keys_of_known_hosts() -> None:
    text = (
        f"# a comment\nweb.corral {ED}\n|1|c2FsdA==|aGFzaA== {ED} root@web\n"
        f"@revoked web.corral {RSA}\nweb.corral {RSA} comment\nbroken line\n"
    )
    assert keys_of_known_hosts(text) == [ED, RSA]


def test_the_private_key(tmp_path: Path, home: Path) -> None:
    assert private_key(access()) is None  # no key pair: the client's defaults
    recorded = tmp_path / "k1"
    recorded.write_text("secret")
    with_record = access(keypair="k1", identity=str(recorded))
    assert private_key(with_record) == str(recorded)
    assert target(with_record, "/s.sock").identity == str(recorded)
    assert target(with_record, "/s.sock", identity="/mine").identity == "/mine"
    gone = access(keypair="k1", identity=str(tmp_path / "gone"))
    with pytest.raises(InvalidInput, match=r"^identity: .*not at .*gone any more; give its path"):
        private_key(gone)
    assert target(gone, "/s.sock", identity="/mine").identity == "/mine"
    unrecorded = access(keypair="k1")
    assert private_key(unrecorded) is None  # not recorded, not at the default path
    default = home / ".ssh" / "corral-k1"
    default.parent.mkdir()
    default.write_text("secret")
    assert private_key(unrecorded) == str(default)
    assert private_key(gone) == str(default)  # recorded elsewhere; the default is here


def test_the_daemons_own_login() -> None:
    """What GET /launch/{task_id} names as each instance's ssh command: from the daemon's host."""
    from corral.compute.ssh import SshAccess

    found = SshAccess("web", "root", "0.0.0.0", 2201, "k1", "/h/k1", (ED,), "/s/known_hosts")
    own = found.on_host()
    assert (own.host, own.identity, own.known_hosts, own.keys_known) == (
        "127.0.0.1",
        "/h/k1",
        "/s/known_hosts",
        True,
    )
    other = found.on_host(user="debian", identity="/mine")
    assert (other.user, other.identity) == ("debian", "/mine")
    unknown = SshAccess("web", "root", "127.0.0.1", 2201, None, None, (), "/s/kh").on_host()
    assert "StrictHostKeyChecking=accept-new" in ssh_argv(unknown)
