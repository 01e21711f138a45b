"""SSH access to a VM: its address, login user, key and known host keys; waiting for sshd.

The pure parts (console parsing, the client's command line) are in
:mod:`corral.compute.sshcmd`; this module reads the records, the console log and the network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.sshcmd import SshTarget, host_keys_from_console, known_hosts
from corral.errors import GuestTimeout, InvalidInput, StateError
from corral.spec.vm import VmSpec

#: The guest port corral's SSH forward points at.
SSH_PORT = 22
#: Login user when neither the VM nor its image names one.
DEFAULT_USER = "root"
#: How much of the end of the console log is searched for host keys.
_CONSOLE_TAIL = 256 * 1024


def ssh_forward(spec: VmSpec) -> tuple[str, int] | None:
    """The host address and port forwarded to the guest's port 22, if any."""
    for nic in spec.nics:
        for forward in nic.forwards:
            if forward.protocol == "tcp" and forward.guest_port == SSH_PORT:
                return forward.host_addr, forward.host_port
    return None


def known_hosts_path(ctx: Corral, name: str) -> Path:
    """The VM's own known_hosts file (inside its directory: deleted with it)."""
    return ctx.home.vm_dir(name) / "known_hosts"


def learn_host_keys(ctx: Corral, name: str, serial_log: str) -> list[str]:
    """Write the host keys the guest printed on its console to the VM's known_hosts.

    The console's latest block replaces what was known (a reinstalled guest has new keys;
    the console is trusted). Without a block, the file is left as it is.

    :return: the keys now on file from the console (empty if the console showed none).
    """
    try:
        with Path(serial_log).open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _CONSOLE_TAIL))
            text = log.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    keys = host_keys_from_console(text)
    if keys:
        path = known_hosts_path(ctx, name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(known_hosts(name, keys))
        tmp.replace(path)
    return keys


def target(
    ctx: Corral,
    name: str,
    user: str | None = None,
    identity: str | None = None,
) -> SshTarget:
    """Where and how to log in to VM ``name`` over its forwarded SSH port.

    :param user: overrides the VM's login user (from its image; ``root`` by default).
    :param identity: overrides the key pair's private key file.
    :raise NotFound: there is no such VM.
    :raise StateError: the VM is not running.
    :raise InvalidInput: the VM has no port forwarded to its port 22, or the key pair's
        private key file is missing and no ``identity`` was given.
    """
    from corral.compute.inventory import info

    view = info(ctx, name, ask_monitor=False)
    if view.state not in ("running", "paused"):
        raise StateError(name, "ssh to", view.state, ("running",))
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        forward = ssh_forward(vm.spec)
        login = user or vm.row.ssh_user or DEFAULT_USER
        keypair = vm.row.keypair
        serial_log = vm.paths.serial_log
    if forward is None:
        raise InvalidInput(
            "vm",
            f"{name!r} has no host port forwarded to its port 22 "
            "(launch it with `corral launch`, or create it with --forward tcp::PORT:22)",
        )
    if identity is None and keypair is not None:
        identity = _private_key(ctx, keypair)
    learn_host_keys(ctx, name, serial_log)
    path = known_hosts_path(ctx, name)
    keys_known = False
    with contextlib.suppress(FileNotFoundError):
        keys_known = path.stat().st_size > 0
    if not path.exists():
        path.touch(mode=0o600)
    host = "127.0.0.1" if forward[0] == "0.0.0.0" else forward[0]  # noqa: S104
    return SshTarget(name, login, host, forward[1], identity, str(path), keys_known)


def _private_key(ctx: Corral, keypair: str) -> str | None:
    """The private key file recorded for ``keypair``, if the pair and the file still exist."""
    from corral.compute.keys import get_key
    from corral.errors import NotFound

    try:
        key = get_key(ctx, keypair)
    except NotFound:
        return None
    path = key.private_key_path
    if path is None:
        return None
    if not Path(path).is_file():
        raise InvalidInput(
            "identity",
            f"the private key of key pair {keypair!r} is not at {path} any more; "
            "give its path with -i",
        )
    return path


def wait_for_sshd(vm: str, host: str, port: int, timeout: float) -> float:
    """Wait until an SSH server answers with its banner on ``host:port``.

    A user-mode NAT forward accepts a connection even while nothing listens in the guest
    (it then closes it), so a connect alone proves nothing: the ``SSH-`` banner does.

    :return: seconds waited.
    :raise GuestTimeout: no banner within ``timeout``.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestTimeout(vm, f"SSH server banner on {host}:{port}", timeout)
        if _banner(host, port, min(remaining, 2.0)):
            return time.monotonic() - start
        # The forward refused or closed at once: the guest is not listening yet.
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _banner(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"SSH-")
    except OSError:
        return False
