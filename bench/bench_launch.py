"""Launch-to-ready of the reference guest: corral against libvirt's ``virsh create``, side by side.

Three ways to boot the same guest (same kernel build, initrd, command line, 256 MiB, 1 vCPU, a
virtio disk that is a qcow2 overlay of the same root disk, a virtio NIC on user-mode
networking), interleaved round by round so that they share the machine's noise:

``corral``
    ``corral start NAME --wait`` run as a fresh process, timed from its start until it returns
    (it returns once ``corral-ready`` is on the serial console). The time corral itself prints
    (``ready in X s``) and the ``corral create`` before it (not part of the launch time) are
    reported too. Every round uses a new VM: create, start, then destroy and delete.
``libvirt, bzImage``
    ``virsh -c qemu:///system create dom.xml`` of the domain a libvirt user would write: type
    ``qemu`` (TCG), machine ``pc``, ``<kernel>`` the compressed bzImage as Debian ships it,
    ``<initrd>``, ``<cmdline>``, and libvirt's defaults for everything else. Timed from running
    ``virsh create`` until ``corral-ready`` appears in the serial log file (``<serial
    type='file'>``), polled with a deadline.
``libvirt, vmlinux``
    The same domain with the uncompressed PVH ``vmlinux`` corral boots: it shows how much of the
    difference is the kernel format and how much is the rest.

libvirt is installed (``apt-get install --no-install-recommends libvirt-daemon-system
libvirt-clients``) only if it is missing, and its daemons are started only if they are not
running (then stopped at the end). One warm-up round is run first and left out.

Usage: ``.venv/bin/python bench/bench_launch.py [--runs 5] [--no-libvirt] [--libvirt-as-found]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

CORRAL = str(Path(sys.executable).with_name("corral"))
VIRSH_URI = "qemu:///system"
MEMORY_MIB = 256
TARGET_RATIO = 2.5
READY_TIMEOUT = 180.0
#: libvirt reads the domain's files as its QEMU user: they live where that user can read them.
LIBVIRT_IMAGES = Path("/var/lib/libvirt/images")
LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"
QEMU_IMG_OVERLAY = ("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b")


@dataclass
class Series:
    """The samples of one row, in seconds."""

    label: str
    samples: list[float] = field(default_factory=list)
    #: Extra per-run figures shown under the row (name -> samples).
    extra: dict[str, list[float]] = field(default_factory=dict)

    def add_extra(self, name: str, value: float) -> None:
        self.extra.setdefault(name, []).append(value)


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# --- corral ---------------------------------------------------------------------------------


class CorralSide:
    """A temporary corral state directory with the reference image, driven through the CLI."""

    def __init__(self) -> None:
        from corral.compute.context import Corral
        from corral.compute.reference import ensure_reference
        from corral.config import Home

        self.home = Path(tempfile.mkdtemp(prefix="cbl-", dir="/tmp"))
        ctx = Corral(Home(self.home))
        try:
            ensure_reference(ctx)
        finally:
            ctx.close()
        self.env = dict(os.environ, CORRAL_HOME=str(self.home), COLUMNS="200")
        self.names: list[str] = []

    def cli(self, *args: str, timeout: float = READY_TIMEOUT) -> str:
        proc = subprocess.run(
            [CORRAL, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"corral {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def image_info(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.cli("image", "info", "reference", "--json"))
        return data

    def run(self, series: Series) -> None:
        name = f"b{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        start = time.perf_counter()
        self.cli("create", name, "--image", "reference", "--memory", f"{MEMORY_MIB}M")
        created = time.perf_counter()
        out = self.cli("start", name, "--wait", "--timeout", str(READY_TIMEOUT))
        ready = time.perf_counter()
        series.samples.append(ready - created)
        series.add_extra("corral create before it (not in the row)", created - start)
        match = re.search(r"ready in ([0-9.]+) s", out)
        if match:
            series.add_extra("'ready in' as corral prints it", float(match.group(1)))
        self.remove(name)

    def remove(self, name: str) -> None:
        self.cli("destroy", name)
        self.cli("delete", name)
        self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                self.remove(name)
        # Anything left (a failed command): kill its QEMU by pid file before removing the home.
        for pid_file in (self.home / "vms").glob("*/qemu.pid"):
            subprocess.run(["pkill", "-9", "-F", str(pid_file)], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


# --- libvirt --------------------------------------------------------------------------------


def virsh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", VIRSH_URI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=check,
    )


def ensure_libvirt_installed() -> str | None:
    """Install libvirt if it is missing; a note on what was done, or ``None``."""
    if shutil.which("virsh") and Path(LIBVIRTD).exists():
        return None
    log("libvirt is missing: apt-get install -y --no-install-recommends ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "libvirt-daemon-system",
        "libvirt-clients",
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"apt-get install of libvirt failed:\n{proc.stdout[-2000:]}")
    return "installed libvirt-daemon-system and libvirt-clients"


def _kvm_node_needs_fix() -> bool:
    """Whether ``/dev/kvm`` lacks Debian's usual ``0660 root:kvm`` (udev sets it; none runs here).

    With ``/dev/kvm`` at ``0600 root:root``, libvirt 9.0 finds KVM unusable by its QEMU user
    while its capability probe reports KVM present: it then discards its capability cache and
    probes QEMU again on every lookup, about a dozen times per ``virsh create`` (some 50 s).
    """
    import grp

    try:
        st = Path("/dev/kvm").stat()
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (FileNotFoundError, KeyError):
        return False
    return not (st.st_gid == kvm_gid and st.st_mode & 0o060 == 0o060)


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A daemon in the foreground, a child of this process (so it is reaped when stopped)."""
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)


def _listening(path: Path) -> bool:
    """Whether a daemon accepts connections on the UNIX socket ``path`` (not a stale file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class LibvirtDaemons:
    """libvirtd and virtlogd, started by the benchmark if they are not running already."""

    def __init__(self, workdir: Path, fix_kvm_node: bool = True) -> None:
        self.workdir = workdir
        self.fix_kvm_node = fix_kvm_node
        self.started: list[subprocess.Popen[bytes]] = []
        self.by_systemd = False
        self.notes: list[str] = []

    @staticmethod
    def answering() -> bool:
        try:
            return virsh("version", check=False, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self) -> None:
        if self.answering():
            self.notes.append("libvirtd was already running: used as it was")
            return
        if Path("/proc/1/comm").read_text().strip() == "systemd":
            subprocess.run(["systemctl", "start", "libvirtd"], check=True)
            self.by_systemd = True
            self.notes.append("started libvirtd through systemd")
        else:
            self._start_by_hand()
        deadline = time.monotonic() + 60
        while not self.answering():
            if time.monotonic() > deadline:
                raise RuntimeError("libvirtd did not answer within 60 s")
            for proc in self.started:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
            time.sleep(0.1)

    def _start_by_hand(self) -> None:
        """No systemd: run the daemons in the foreground as children of this process."""
        daemon_log = self.workdir / "daemons.log"
        if not _listening(Path("/run/libvirt/virtlogd-sock")):
            self.started.append(_spawn([VIRTLOGD], daemon_log))
            self._wait_for(Path("/run/libvirt/virtlogd-sock"))
        argv = [LIBVIRTD]
        if _kvm_node_needs_fix() and self.fix_kvm_node:
            # A private mount namespace where /dev/kvm is a node for the same device with
            # Debian's usual mode: nothing changes on the host itself.
            node = self.workdir / "kvm"
            os.mknod(node, 0o660 | stat.S_IFCHR, os.makedev(10, 232))
            import grp

            os.chown(node, 0, grp.getgrnam("kvm").gr_gid)
            node.chmod(0o660)
            script = f'mount --bind "{node}" /dev/kvm && exec {LIBVIRTD}'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
            self.notes.append(
                "libvirtd started by the benchmark in a private mount namespace where /dev/kvm"
                " is 0660 root:kvm (Debian's udev default; here it is 0600 root:root, which"
                " makes libvirt 9.0 re-probe QEMU on every capability lookup)"
            )
        else:
            self.notes.append("libvirtd started by the benchmark (no systemd here), host as found")
        self.started.append(_spawn(argv, daemon_log))

    @staticmethod
    def _wait_for(path: Path) -> None:
        deadline = time.monotonic() + 30
        while not _listening(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} did not appear within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.by_systemd:
            subprocess.run(["systemctl", "stop", "libvirtd"], check=False)
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.started.clear()


DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""


class LibvirtSide:
    """The reference guest's files copied where libvirt's QEMU user can read them."""

    def __init__(self, vmlinux: Path, bzimage: Path, initrd: Path, rootdisk: Path, cmdline: str):
        LIBVIRT_IMAGES.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="corral-bench-", dir=LIBVIRT_IMAGES))
        self.dir.chmod(0o755)
        self.files = {}
        for src, dest in (
            (vmlinux, "vmlinux"),
            (bzimage, "bzImage"),
            (initrd, "initrd.img"),
            (rootdisk, "root.qcow2"),
        ):
            shutil.copyfile(src, self.dir / dest)
            (self.dir / dest).chmod(0o644)
            self.files[dest] = self.dir / dest
        self.cmdline = cmdline
        self.domains: list[str] = []
        self.ready_marker = b"corral-ready"

    def run(self, kernel: str, series: Series) -> None:
        name = f"corral-bench-{uuid.uuid4().hex[:8]}"
        overlay = self.dir / f"{name}.qcow2"
        serial = self.dir / f"{name}.serial.log"
        xml = self.dir / f"{name}.xml"
        subprocess.run(
            [*QEMU_IMG_OVERLAY, str(self.files["root.qcow2"]), str(overlay)],
            check=True,
        )
        xml.write_text(
            DOMAIN_XML.format(
                name=name,
                memory=MEMORY_MIB,
                kernel=escape(str(self.files[kernel])),
                initrd=escape(str(self.files["initrd.img"])),
                cmdline=escape(self.cmdline),
                disk=escape(str(overlay)),
                serial=escape(str(serial)),
            )
        )
        self.domains.append(name)
        try:
            start = time.perf_counter()
            virsh("create", str(xml), timeout=READY_TIMEOUT)
            created = time.perf_counter()
            ready = self._wait_ready(serial, start)
            series.samples.append(ready - start)
            series.add_extra("virsh create returned after", created - start)
        finally:
            self.remove(name)
            for path in (overlay, serial, xml):
                path.unlink(missing_ok=True)

    def _wait_ready(self, serial: Path, start: float) -> float:
        deadline = start + READY_TIMEOUT
        while True:
            now = time.perf_counter()
            with suppress(FileNotFoundError):
                if self.ready_marker in serial.read_bytes():
                    return now
            if now > deadline:
                tail = (
                    serial.read_bytes()[-600:].decode(errors="replace") if serial.exists() else ""
                )
                raise RuntimeError(f"no {self.ready_marker!r} within {READY_TIMEOUT} s:\n{tail}")
            time.sleep(0.02)

    def remove(self, name: str) -> None:
        virsh("destroy", name, check=False)
        # Domains from `virsh create` are transient: undefine only finds persistent leftovers.
        virsh("undefine", name, check=False)
        self.domains.remove(name)
        Path(f"/var/log/libvirt/qemu/{name}.log").unlink(missing_ok=True)

    def close(self) -> None:
        for name in list(self.domains):
            with suppress(subprocess.SubprocessError, OSError):
                self.remove(name)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the run --------------------------------------------------------------------------------


@contextmanager
def cleanup_on_signal() -> Iterator[None]:
    """Turn SIGTERM into an exception, so that every ``finally`` below runs."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fmt(samples: list[float]) -> str:
    return (
        f"{statistics.median(samples):7.2f} {min(samples):7.2f} {max(samples):7.2f}"
        if samples
        else f"{'-':>7} {'-':>7} {'-':>7}"
    )


def print_table(
    rows: list[Series], runs: int, notes: list[str], guest: str, fair: bool = True
) -> float | None:
    corral = rows[0]
    print(
        f"launch to ready of the reference guest ({guest}) under TCG,"
        f" {MEMORY_MIB} MiB, 1 vCPU, {runs} runs interleaved, seconds"
    )
    print(f"{'':44} {'median':>7} {'min':>7} {'max':>7}  {'ratio':>6}")
    ratio: float | None = None
    base = statistics.median(corral.samples)
    for row in rows:
        text = f"{row.label:44} {fmt(row.samples)}"
        if row is not corral and row.samples:
            row_ratio = statistics.median(row.samples) / base
            text += f"  {row_ratio:5.2f}x"
            if ratio is None:
                ratio = row_ratio
        print(text)
        for name, samples in row.extra.items():
            print(f"  {name:42} {fmt(samples)}")
    for note in notes:
        print(f"note: {note}")
    if ratio is not None and not fair:
        print(f"ratio {ratio:.2f}x against libvirt as found: not a fair baseline, no verdict")
        return None
    if ratio is not None:
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(
            f"corral is {ratio:.2f}x faster than libvirt's default domain:"
            f" {verdict} the {TARGET_RATIO}x target"
        )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-libvirt", action="store_true", help="corral only")
    parser.add_argument(
        "--libvirt-as-found",
        action="store_true",
        help="start libvirtd without the /dev/kvm mode fix (slow here: see the README)",
    )
    args = parser.parse_args()

    from corral.config import default_cache
    from corral.guest.build import build_reference_guest

    guest = build_reference_guest(default_cache())
    corral_row = Series("corral start --wait (CLI, wall)")
    bz_row = Series("virsh create, bzImage (libvirt default)")
    vm_row = Series("virsh create, vmlinux (PVH, as corral)")
    actions: list[Callable[[], None]] = []
    notes: list[str] = []
    cleanups: list[Callable[[], None]] = []
    workdir = Path(tempfile.mkdtemp(prefix="cbl-", dir="/tmp"))
    cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    try:
        with cleanup_on_signal():
            corral = CorralSide()
            cleanups.append(corral.close)
            info = corral.image_info()
            if info.get("cmdline") != guest.cmdline:
                raise RuntimeError("the imported reference image is not the cached guest build")
            actions.append(lambda: corral.run(corral_row))
            libvirt_error: str | None = None
            if not args.no_libvirt:
                try:
                    note = ensure_libvirt_installed()
                    if note:
                        notes.append(note)
                    daemons = LibvirtDaemons(workdir, fix_kvm_node=not args.libvirt_as_found)
                    cleanups.append(daemons.stop)
                    daemons.start()
                    notes.extend(daemons.notes)
                    lv = LibvirtSide(
                        guest.vmlinux, guest.bzimage, guest.initrd, guest.rootdisk, guest.cmdline
                    )
                    cleanups.append(lv.close)
                    actions.append(lambda: lv.run("bzImage", bz_row))
                    actions.append(lambda: lv.run("vmlinux", vm_row))
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    libvirt_error = f"libvirt could not be used: {exc}"
                    log(libvirt_error)
            for round_no in range(args.runs + 1):
                log(
                    f"round {round_no}/{args.runs}"
                    + (" (warm-up, not counted)" if not round_no else "")
                )
                for action in actions:
                    action()
                if round_no == 0:
                    for row in (corral_row, bz_row, vm_row):
                        row.samples.clear()
                        row.extra.clear()
            if libvirt_error:
                notes.append(libvirt_error)
    finally:
        for cleanup in reversed(cleanups):
            with suppress(Exception):
                cleanup()
    rows = [corral_row, bz_row, vm_row] if bz_row.samples else [corral_row]
    guest_text = f"{guest.key[:12]}, kernel {guest.kernel_version}"
    ratio = print_table(rows, args.runs, notes, guest_text, fair=not args.libvirt_as_found)
    return 0 if ratio is None or ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
