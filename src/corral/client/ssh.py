"""Logging in to a VM from the machine the client runs on, with what the daemon answers
(:class:`~corral.api.schemas.launch.SshAccessRead`).

- **Where.** A daemon reached over its UNIX socket runs here: the forward's address is used
  as it is (a wildcard one as ``127.0.0.1``). A daemon reached over TCP runs on its URL's
  host: a wildcard forward is reached at that host, and a loopback one through it
  (``ProxyJump``, with the user's own SSH access to that host), unless that host is this
  machine's loopback too.
- **Which host keys.** The guest's, as its console showed them, and no other: with a local
  daemon, the VM's own known_hosts file that the daemon keeps; with a remote one, a file of
  this client's, ``$XDG_STATE_HOME/corral/known_hosts/<host>-<port>/<vm>``, rewritten from
  the answer each time (mode 0600). Without keys yet, the first connection adds them
  (``accept-new``); then ``StrictHostKeyChecking=yes``.
- **Which private key.** ``-i`` if given; else the key pair's recorded private key file if it
  is on this machine; else ``~/.ssh/corral-<key pair>`` if that is (where ``corral key
  create`` writes); else the OpenSSH client's own defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from corral.api.schemas.launch import SshAccessRead
from corral.compute.sshcmd import SshTarget, keys_of_known_hosts, known_hosts
from corral.errors import InvalidInput

_WILDCARD = ("0.0.0.0", "::", "")  # noqa: S104
_LOOPBACK = ("localhost", "::1")


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in _LOOPBACK


def remote_host(daemon: str) -> tuple[str, int] | None:
    """The host and port of a daemon reached over TCP (``None``: its UNIX socket, here).

    :param daemon: the client's :attr:`~corral.client.transport.Transport.address`: a URL,
        or the socket's path.
    """
    if "://" not in daemon:
        return None
    parts = urlsplit(daemon)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "localhost", parts.port or default


def state_dir() -> Path:
    """``$XDG_STATE_HOME/corral`` (``~/.local/state/corral``)."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "corral"


def known_hosts_file(host: str, port: int, vm: str) -> Path:
    """This client's known_hosts file for VM ``vm`` of the daemon at ``host:port``."""
    return state_dir() / "known_hosts" / f"{host}-{port}" / vm


def target(
    access: SshAccessRead,
    daemon: str,
    user: str | None = None,
    identity: str | None = None,
) -> SshTarget:
    """How to log in to ``access.vm`` from here (the rules are in the module docstring).

    :param daemon: where the client reaches the daemon (a URL, or the socket's path).
    :param user: overrides the login user; :param identity: the private key file.
    :raise InvalidInput: the key pair's private key is recorded but is neither at its
        recorded path nor at the default one, and no ``identity`` was given.
    """
    remote = remote_host(daemon)
    host, jump = access.address, None
    if remote is None:
        path, keys_known = access.known_hosts, bool(access.host_keys)
        if host in _WILDCARD:
            host = "127.0.0.1"
    else:
        daemon_host, port = remote
        file = _write_known_hosts(known_hosts_file(daemon_host, port, access.vm), access)
        path, keys_known = str(file), file.stat().st_size > 0
        if host in _WILDCARD:
            host = daemon_host
        elif is_loopback(host) and not is_loopback(daemon_host):
            jump = daemon_host
    return SshTarget(
        access.vm,
        user or access.user,
        host,
        access.port,
        identity or private_key(access),
        path,
        keys_known,
        jump,
    )


def _write_known_hosts(path: Path, access: SshAccessRead) -> Path:
    """Put the answer's host keys in ``path`` (atomically); without any, keep what the file
    holds (what a first connection added)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not access.host_keys:
        if not path.exists():
            path.touch(mode=0o600)
        return path
    text = known_hosts(access.vm, access.host_keys)
    try:
        if keys_of_known_hosts(path.read_text()) == list(access.host_keys):
            return path
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)
    return path


def private_key(access: SshAccessRead) -> str | None:
    """The key pair's private key file on this machine, if there is one (see the module
    docstring).

    :raise InvalidInput: it is recorded, but is neither there nor at the default path.
    """
    from corral.compute.keys import default_private_key_path

    if access.keypair is None:
        return None
    recorded = access.identity
    default = default_private_key_path(access.keypair)
    for candidate in (recorded, str(default)):
        if candidate is not None and Path(candidate).is_file():
            return candidate
    if recorded is not None:
        raise InvalidInput(
            "identity",
            f"the private key of key pair {access.keypair!r} is not at {recorded} any more; "
            "give its path with -i",
        )
    return None
