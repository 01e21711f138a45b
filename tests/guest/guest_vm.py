"""A small QEMU driver for the reference guest tests: boot, serial console, QMP, teardown.

Test-only code. Every wait polls with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from corral.guest import HOST_KEYS_BEGIN, HOST_KEYS_END, ReferenceGuest

POLL = 0.01
_tokens = itertools.count(1)
#: The MAC address of the NIC that ``GuestVM(nic=True)`` attaches.
NIC_MAC = "52:54:00:12:34:56"


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def _blockdev(**options: object) -> str:
    return json.dumps(options, separators=(",", ":"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (QEMU binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GuestError(AssertionError):
    """The guest did not do what a test waited for; carries the end of its serial log."""


class GuestVM:
    """One QEMU process booting the reference guest on a fresh qcow2 overlay of its root disk.

    Socket paths stay short (a directory made under /tmp), as UNIX sockets require.
    ``seed`` attaches a NoCloud seed image as corral does: a read-only virtio-blk disk
    (``file`` and ``raw`` block nodes, both read-only). ``nic`` attaches a virtio NIC on
    QEMU's user-mode network with ``restrict=on`` (the guest reaches nothing outside) and the
    guest's SSH port forwarded from ``127.0.0.1:<ssh_port>``.
    """

    def __init__(
        self,
        guest: ReferenceGuest,
        *,
        cmdline: str | None = None,
        extra_args: Sequence[str] = (),
        root_disk: bool = True,
        memory_mib: int = 256,
        seed: Path | None = None,
        nic: bool = False,
        cpu: str | None = None,
    ) -> None:
        self.guest = guest
        self.dir = Path(tempfile.mkdtemp(prefix="cg-", dir="/tmp"))
        self.overlay = self.dir / "overlay.qcow2"
        self.serial_log = self.dir / "serial.log"
        self.serial_sock = self.dir / "s.sock"
        self.qmp_sock = self.dir / "q.sock"
        self.stderr_log = self.dir / "qemu.err"
        self.cmdline = cmdline if cmdline is not None else guest.cmdline
        self.extra_args = list(extra_args)
        self.root_disk = root_disk
        self.memory_mib = memory_mib
        self.seed = seed
        self.ssh_port = free_port() if nic else None
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._serial: socket.socket | None = None
        self._qmp: socket.socket | None = None
        self._qmp_buf = b""

    # -- process ---------------------------------------------------------------------------

    def argv(self) -> list[str]:
        g = self.guest
        argv = [
            qemu_binary() or "qemu-system-x86_64",
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "pc,accel=tcg",
            *(["-cpu", self.cpu] if self.cpu else []),
            "-m",
            str(self.memory_mib),
            "-display",
            "none",
            "-kernel",
            str(g.vmlinux),
            "-initrd",
            str(g.initrd),
            "-append",
            self.cmdline,
        ]
        if self.root_disk:
            argv += [
                "-blockdev",
                _blockdev(
                    driver="file",
                    filename=str(g.rootdisk),
                    **{"node-name": "base-file", "read-only": True},
                ),
                "-blockdev",
                _blockdev(
                    driver="qcow2", file="base-file", **{"node-name": "base", "read-only": True}
                ),
                "-blockdev",
                _blockdev(driver="file", filename=str(self.overlay), **{"node-name": "top-file"}),
                "-blockdev",
                _blockdev(driver="qcow2", file="top-file", backing="base", **{"node-name": "top"}),
                "-device",
                "virtio-blk-pci,drive=top",
            ]
        if self.seed is not None:
            argv += [
                "-blockdev",
                _blockdev(
                    driver="file",
                    filename=str(self.seed),
                    **{"node-name": "seed-file", "read-only": True},
                ),
                "-blockdev",
                _blockdev(
                    driver="raw", file="seed-file", **{"node-name": "seed", "read-only": True}
                ),
                "-device",
                "virtio-blk-pci,drive=seed",
            ]
        if self.ssh_port is not None:
            argv += [
                "-netdev",
                f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                "-device",
                f"virtio-net-pci,netdev=net0,romfile=,mac={NIC_MAC}",
            ]
        argv += [
            "-chardev",
            f"socket,id=ser0,path={self.serial_sock},server=on,wait=off,logfile={self.serial_log}",
            "-device",
            "isa-serial,chardev=ser0",
            "-qmp",
            f"unix:{self.qmp_sock},server=on,wait=off",
            *self.extra_args,
        ]
        return argv

    def start(self) -> GuestVM:
        if self.root_disk and not self.overlay.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.guest.rootdisk),
                 "-F", "qcow2", str(self.overlay)],
                check=True,
            )  # fmt: skip
        self.started_at = time.monotonic()
        with self.stderr_log.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"QEMU still runs after {timeout:.0f} s\n{self.tail()}") from None

    def kill(self) -> None:
        for sock in (self._serial, self._qmp):
            if sock is not None:
                sock.close()
        self._serial = self._qmp = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GuestVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- serial log --------------------------------------------------------------------------

    def log(self) -> str:
        try:
            data = self.serial_log.read_bytes()
        except FileNotFoundError:
            return ""
        return data.decode(errors="replace").replace("\r", "")

    def tail(self, lines: int = 25) -> str:
        qemu_err = self.stderr_log.read_text(errors="replace") if self.stderr_log.exists() else ""
        text = "\n".join(self.log().splitlines()[-lines:])
        return f"--- serial (last {lines} lines) ---\n{text}\n--- qemu stderr ---\n{qemu_err}"

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match[str]:
        """Wait until the serial log, from offset ``after``, matches ``pattern`` (multiline)."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            match = regex.search(text, after)
            if match:
                return match
            if not self.running():
                raise GuestError(
                    f"QEMU exited ({self.proc.returncode if self.proc else None}) before "
                    f"{pattern!r} appeared\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise GuestError(f"no {pattern!r} within {timeout:.0f} s\n{self.tail()}")
            time.sleep(POLL)

    def wait_ready(self, timeout: float = 60.0, after: int = 0) -> float:
        """Wait for the ready marker; return seconds since QEMU started."""
        self.wait_for(rf"^{re.escape(self.guest.ready_marker)}$", timeout, after)
        return time.monotonic() - self.started_at

    def host_keys(self, after: int = 0) -> list[str]:
        """The lines of the last SSH host key block on the console (from offset ``after``)."""
        text = self.log()[after:]
        blocks = re.findall(
            rf"^{re.escape(HOST_KEYS_BEGIN)}\n(.*?)^{re.escape(HOST_KEYS_END)}$",
            text,
            re.MULTILINE | re.DOTALL,
        )
        if not blocks:
            raise GuestError(f"no SSH host key block on the console\n{self.tail()}")
        return [line for line in blocks[-1].splitlines() if line]

    # -- SSH -----------------------------------------------------------------------------------

    def ssh(
        self,
        command: str,
        key: Path,
        known_hosts: Path,
        *,
        timeout: float = 60.0,
        tty: bool = False,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as root in the guest through the real OpenSSH client.

        Host keys are checked strictly against ``known_hosts``; only ``key`` is offered;
        nothing asks a question (``BatchMode``).
        """
        assert self.ssh_port is not None, "boot with nic=True to reach the guest's SSH server"
        argv = [
            "ssh",
            "-i",
            str(key),
            "-p",
            str(self.ssh_port),
            "-F",
            "/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            *(["-tt"] if tty else []),
            "root@127.0.0.1",
            command,
        ]
        return subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- serial console ------------------------------------------------------------------------

    def _connect(self, path: Path, timeout: float = 10.0) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if not self.running() or time.monotonic() > deadline:
                    raise GuestError(f"cannot connect to {path}\n{self.tail()}") from None
                time.sleep(POLL)

    def type(self, text: str) -> None:
        """Send keystrokes to the serial console.

        The connection is drained by a thread: QEMU writes the guest's output to the socket a
        byte at a time, and a client that does not read stalls the guest's console (and every
        writer to it) after a few hundred bytes. The log file has everything anyway.
        """
        if self._serial is None:
            self._serial = self._connect(self.serial_sock)
            threading.Thread(target=self._drain, args=(self._serial,), daemon=True).start()
        self._serial.sendall(text.encode())

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def shell(self, command: str, timeout: float = 30.0) -> str:
        """Run a command in the guest's console shell; return its output.

        The output is framed by marker lines that the shell computes (``$((…))``), so the echo
        of the typed line, however the line editor wraps it, never matches them.
        """
        token = next(_tokens)
        begin, end = token * 1000 + 1, token * 1000 + 7
        start = len(self.log())
        self.type(
            f"echo corral-test-$(({token}*1000+1))-begin; {command}; "
            f"echo corral-test-$(({token}*1000+7))-end\n"
        )
        first = self.wait_for(rf"^corral-test-{begin}-begin$", timeout, start)
        last = self.wait_for(rf"^corral-test-{end}-end$", timeout, first.end())
        output = self.log()[first.end() : last.start()]
        # heartbeats interleave with the output, whole lines at a time
        return "\n".join(
            line
            for line in output.splitlines()
            if line and not line.startswith("corral-heartbeat ")
        )

    # -- QMP -------------------------------------------------------------------------------------

    def _qmp_read(self, timeout: float) -> dict[str, object]:
        assert self._qmp is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._qmp_buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestError(f"QMP: no answer within {timeout:.0f} s")
            self._qmp.settimeout(remaining)
            chunk = self._qmp.recv(65536)
            if not chunk:
                raise GuestError("QMP: connection closed")
            self._qmp_buf += chunk
        line, _, self._qmp_buf = self._qmp_buf.partition(b"\n")
        message: dict[str, object] = json.loads(line)
        return message

    def qmp(self, command: str, timeout: float = 10.0, **arguments: object) -> object:
        if self._qmp is None:
            self._qmp = self._connect(self.qmp_sock)
            self._qmp_read(timeout)  # greeting
            self._qmp.sendall(b'{"execute":"qmp_capabilities"}\n')
            while "return" not in self._qmp_read(timeout):
                pass
        request: dict[str, object] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._qmp.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._qmp_read(timeout)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise GuestError(f"QMP {command} failed: {reply['error']}")


def cache_dir() -> Path:
    """Where the tests build the reference guest: corral's own cache, shared with the CLI."""
    from corral.config import default_cache

    return default_cache()
