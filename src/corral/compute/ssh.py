"""SSH access to a VM: its address, login user, key and known host keys; waiting for sshd.

:func:`access` is what the API answers (``GET /vms/{name}/ssh``): where the forward listens
(or, for a VM without one, its first address on a managed network, port 22, which the host
reaches through the network's bridge),
who logs in, the key pair and the host keys, none of it tied to the machine a client runs
on (:meth:`SshAccess.on_host` is the login from the daemon's own host; a client elsewhere
makes its own, :mod:`corral.client.ssh`). The pure parts (console parsing, the client's
command line) are in :mod:`corral.compute.sshcmd`; this module reads the records, the
console log and the network.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from corral.compute import records
from corral.compute.context import Corral
from corral.compute.sshcmd import (
    SshTarget,
    host_keys_from_console,
    keys_of_known_hosts,
    known_hosts,
)
from corral.compute.vm_ports import first_address
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


@dataclass(frozen=True)
class SshAccess:
    """What a client needs to log in to a VM, as its daemon knows it: nothing here depends on
    the machine the client runs on (see :meth:`on_host` for the daemon's own host)."""

    vm: str
    #: The login user (the image's, unless the VM records another; ``root`` by default).
    user: str
    #: The address the SSH forward listens on, as the daemon's host sees it.
    address: str
    port: int
    #: The key pair installed in the guest, if it was launched with one.
    keypair: str | None
    #: The private key file recorded for that key pair: a path on the machine that made or
    #: imported it, if one was recorded.
    identity: str | None
    #: The guest's host keys (``<kind> <base64>``) learned from its console.
    host_keys: tuple[str, ...]
    #: The VM's own known_hosts file on the daemon's host (holding :attr:`host_keys`).
    known_hosts: str

    def on_host(self, user: str | None = None, identity: str | None = None) -> SshTarget:
        """The target as seen from the daemon's own host (its known_hosts file, the recorded
        private key path).

        :param user: overrides the login user.
        :param identity: overrides the recorded private key file.
        """
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address  # noqa: S104
        return SshTarget(
            self.vm,
            user or self.user,
            host,
            self.port,
            identity or self.identity,
            self.known_hosts,
            bool(self.host_keys),
        )


def access(ctx: Corral, name: str) -> SshAccess:
    """How VM ``name`` is reached over its forwarded SSH port; the host keys its console
    printed are learned first.

    :raise NotFound: there is no such VM.
    :raise StateError: the VM is not running (or paused).
    :raise InvalidInput: the VM has no port forwarded to its port 22.
    """
    from corral.compute.inventory import info

    view = info(ctx, name, ask_monitor=False)
    if view.state not in ("running", "paused"):
        raise StateError(name, "ssh to", view.state, ("running",))
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        forward = ssh_forward(vm.spec)
        if forward is None:  # no user-mode forward: its first managed network's address
            address = first_address(session, vm.spec)
            forward = None if address is None else (str(address), SSH_PORT)
        login = vm.row.ssh_user or DEFAULT_USER
        keypair = vm.row.keypair
        serial_log = vm.paths.serial_log
    if forward is None:
        raise InvalidInput(
            "vm",
            f"{name!r} has no host port forwarded to its port 22 and no address on a managed "
            "network (launch it with `corral launch`, or create it with --forward tcp::PORT:22 "
            "or --net NETWORK)",
        )
    learn_host_keys(ctx, name, serial_log)
    path = known_hosts_path(ctx, name)
    keys: list[str] = []
    try:
        keys = keys_of_known_hosts(path.read_text())
    except FileNotFoundError:
        path.touch(mode=0o600)
    return SshAccess(
        vm=name,
        user=login,
        address=forward[0],
        port=forward[1],
        keypair=keypair,
        identity=_recorded_key(ctx, keypair),
        host_keys=tuple(keys),
        known_hosts=str(path),
    )


def _recorded_key(ctx: Corral, keypair: str | None) -> str | None:
    """The private key path recorded for ``keypair``, if the pair still exists."""
    from corral.compute.keys import get_key
    from corral.errors import NotFound

    if keypair is None:
        return None
    try:
        return get_key(ctx, keypair).private_key_path
    except NotFound:
        return None


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
