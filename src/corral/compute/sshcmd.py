"""Reaching a guest over SSH, as pure functions: its host keys from the console, the OpenSSH
client's command line.

Host keys are learned from the serial console, a channel the guest cannot have forged for
another machine: cloud-init prints them between ``-----BEGIN SSH HOST KEY KEYS-----`` and
``-----END SSH HOST KEY KEYS-----`` (prefixed by ``ec2:`` or a log tag on some images), and
the reference guest prints the same block. They go to a ``known_hosts`` file of the VM's own,
under a ``HostKeyAlias`` (``<vm>.corral``), so the entry holds whatever loopback port the VM
is forwarded on, and ``~/.ssh/known_hosts`` is never touched. When the console shows no
keys, the first connection learns them (``StrictHostKeyChecking=accept-new``).

A forward listens on the daemon's host; a client elsewhere reaches a loopback forward through
that host (``ProxyJump``), with the same host keys checked at the end of the tunnel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"

_KEY = re.compile(
    r"(?P<kind>ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|"
    r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)"
    r"\s+(?P<blob>AAAA[A-Za-z0-9+/]+={0,3})(?:\s|$)"
)


def host_keys_from_console(text: str) -> list[str]:
    """The host keys of the last complete key block in a console log.

    :param text: the serial console's output (any prefixes, CR/LF line ends).
    :return: ``<kind> <base64>`` lines, in the order printed; empty if no complete block.
    """
    block: list[str] | None = None
    last: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if BEGIN in line:
            block = []
        elif END in line:
            if block is not None:
                last = block
            block = None
        elif block is not None:
            match = _KEY.search(line)
            if match:
                block.append(f"{match['kind']} {match['blob']}")
    return last


def host_key_alias(vm: str) -> str:
    """The name a VM's host keys are filed under in its ``known_hosts``."""
    return f"{vm}.corral"


def known_hosts(vm: str, keys: Iterable[str]) -> str:
    """A ``known_hosts`` file for ``vm``'s host keys (deduplicated, order kept)."""
    alias = host_key_alias(vm)
    seen: dict[str, None] = dict.fromkeys(keys)
    return "".join(f"{alias} {key}\n" for key in seen)


def keys_of_known_hosts(text: str) -> list[str]:
    """The ``<kind> <base64>`` keys of a one-host ``known_hosts`` file (deduplicated, in
    order), whatever names or hashed names their lines start with; markers and comments
    are skipped."""
    keys: dict[str, None] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@")):
            continue
        match = _KEY.match(f"{fields[1]} {fields[2]}")
        if match:
            keys[f"{match['kind']} {match['blob']}"] = None
    return list(keys)


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in to one VM."""

    vm: str
    user: str
    host: str
    port: int
    #: The private key to offer, if corral knows it (else the client's defaults).
    identity: str | None
    #: The VM's own known_hosts file.
    known_hosts: str
    #: Whether that file already holds the guest's keys (else the first connection adds them).
    keys_known: bool
    #: A host to reach ``host`` through (``ProxyJump``): the daemon's host, for a loopback
    #: forward seen from another machine.
    jump: str | None = None


def _options(target: SshTarget) -> list[str]:
    opts = [
        "-o", f"HostKeyAlias={host_key_alias(target.vm)}",
        "-o", f"UserKnownHostsFile={target.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=" + ("yes" if target.keys_known else "accept-new"),
        "-o", "CheckHostIP=no",
    ]  # fmt: skip
    if target.jump is not None:
        opts += ["-o", f"ProxyJump={target.jump}"]
    if target.identity is not None:
        opts += ["-i", target.identity, "-o", "IdentitiesOnly=yes"]
    return opts


def ssh_argv(
    target: SshTarget,
    command: Sequence[str] = (),
    options: Sequence[str] = (),
    program: str = "ssh",
) -> list[str]:
    """The OpenSSH client's command line to log in to ``target`` (and run ``command``).

    :param options: more client options, placed before the destination.
    """
    argv = [program, "-p", str(target.port), *_options(target), *options]
    argv.append(f"{target.user}@{target.host}")
    if command:
        argv += ["--", *command]
    return argv


def scp_argv(
    target: SshTarget,
    sources: Sequence[str],
    dest: str,
    options: Sequence[str] = (),
    program: str = "scp",
) -> list[str]:
    """``scp`` with ``target``'s options; remote paths are ``:path`` (prefixed here).

    :param sources: local paths, or remote ones starting with ``:``.
    :param dest: a local path, or a remote one starting with ``:``.
    """

    def where(path: str) -> str:
        return f"{target.user}@{target.host}:{path[1:]}" if path.startswith(":") else path

    return [
        program,
        "-P",
        str(target.port),
        *_options(target),
        *options,
        *(where(s) for s in sources),
        where(dest),
    ]


def shell_quote(argv: Sequence[str]) -> str:
    """``argv`` as one line a POSIX shell reads back into the same words."""
    import shlex

    return " ".join(shlex.quote(arg) for arg in argv)
