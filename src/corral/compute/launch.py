"""``corral launch``: an image, an instance type and a key pair become running instances.

A launch runs in two stages:

1. **Check, then make** (all or nothing). Everything that can be refused is checked before
   anything is created: names, project, image, type, key pair, disk size, the project's
   quota for all instances together, user-data (parsed, merged and checked by
   ``cloud-init schema``) and the host's free memory, disk and CPUs for all instances.
   Then each instance is made in parallel: its root disk cloned and grown to the type's
   size with a loopback port forwarded to its port 22 (``clone``), its NoCloud seed
   written (``seed``) and its QEMU started (``start``). If any instance fails
   here, every instance of the launch is destroyed and deleted: no disk, seed, port
   reservation or process is left. Each instance's record is inserted under the project's
   quota lock (see :mod:`corral.compute.define`): a concurrent create that took the room
   in the meantime makes the launch fail here, and roll back, rather than exceed the quota.
2. **Wait** (in parallel): for the image's ready marker on the serial console (``boot``),
   then for the SSH server's banner on the forwarded port (``ready``); the host keys the
   guest printed go to the VM's own known_hosts. An instance that is not ready by the
   deadline stays as it is, running, for the user to inspect or delete; the error carries
   its last console lines.

Instances go into the launch's project (``default`` unless told otherwise); the image must be
the project's or shared (in ``default``) and the key pair the project's own (the rules are
in :mod:`corral.compute.ownership`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from corral.compute import capacity, lifecycle
from corral.compute.context import Corral
from corral.compute.define import (
    USER_NETWORK,
    CreateRequest,
    NetworkNic,
    check_name,
    create,
    delete,
)
from corral.compute.ports import bindable, pick_port, ports_lock, reserved_by_records
from corral.compute.serial import wait_for_line
from corral.compute.settings import load_settings
from corral.compute.ssh import SSH_PORT, access, learn_host_keys, wait_for_sshd
from corral.compute.sshcmd import SshTarget, ssh_argv
from corral.errors import (
    AlreadyExists,
    CorralError,
    GuestTimeout,
    InvalidInput,
    NotFound,
    StateError,
)
from corral.qemu import process
from corral.units import format_size, parse_size

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from corral.compute.images import ImageView
    from corral.compute.keys import KeyPairView
    from corral.spec.cloud import InstanceType
    from corral.spec.vm import VmSpec

#: The phases of one instance's launch, in order.
PHASES = ("clone", "seed", "start", "boot", "ready")
Phase = Literal["clone", "seed", "start", "boot", "ready"]
#: Most instances one launch makes.
MAX_COUNT = 64
#: Default seconds from QEMU's start to a ready SSH server.
READY_TIMEOUT = 120.0
#: Loopback address the SSH forwards listen on.
SSH_ADDR = "127.0.0.1"


@dataclass(frozen=True)
class LaunchRequest:
    """What ``corral launch`` asks for."""

    name: str
    image: str
    instance_type: str
    keypair: str
    #: The user's own user-data, as given.
    user_data: str | None = None
    count: int = 1
    #: Root disk size; ``None`` takes the instance type's.
    disk_size: str | int | None = None
    #: Wait until SSH answers (else return once QEMU runs).
    wait: bool = True
    timeout: float = READY_TIMEOUT
    #: Cut the guest off from the host and the outside; only the SSH forward reaches it.
    isolated: bool = False
    #: The project the instances go into, by name; ``None`` is ``default``.
    project: str | None = None
    #: The NICs, in order (see :class:`~corral.compute.define.NetworkNic`); empty: one
    #: user-mode NIC. Without a user-mode NIC, SSH goes to the first managed network's
    #: address, port 22.
    networks: tuple[NetworkNic, ...] = ()

    @property
    def user_nic(self) -> bool:
        """Whether the instances have a user-mode NIC (their SSH port forwarded to it)."""
        return not self.networks or any(n.network == USER_NETWORK for n in self.networks)


@dataclass(frozen=True)
class PhaseEvent:
    """A phase of one instance began (``seconds`` is None), ended, or failed."""

    instance: str
    phase: Phase
    status: Literal["begin", "end", "fail"]
    seconds: float | None = None
    #: The instance's cloud-init instance id.
    instance_id: str | None = None
    #: The host port forwarded to its SSH server, once ``clone`` has reserved it.
    port: int | None = None
    #: Where its SSH server is reached: the forward's loopback address, or (without a
    #: user-mode NIC) its first managed network's address, once known.
    host: str | None = None


ProgressFn = Callable[[PhaseEvent], None]


@dataclass
class Instance:
    """One launched instance and how to reach it."""

    name: str
    instance_id: str
    user: str
    host: str
    port: int
    #: Private key file, if corral knows it.
    identity: str | None
    #: Seconds each finished phase took.
    phases: dict[str, float] = field(default_factory=dict)
    #: ``ready`` (SSH answers), ``running`` (not waited for), or ``not ready`` (timed out).
    status: str = "running"
    #: Why it is not ready.
    error: CorralError | None = None
    #: The OpenSSH command that logs in (set once SSH is ready).
    ssh_command: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())


class LaunchFailed(CorralError):
    """Some instances of a launch are not ready; they are left running for inspection.

    :param instances: every instance of the launch, ready or not.
    """

    status = 504

    def __init__(self, instances: Sequence[Instance]) -> None:
        bad = [i for i in instances if i.error is not None]
        first = bad[0].error
        assert first is not None
        names = ", ".join(i.name for i in bad)
        super().__init__(
            f"{len(bad)} of {len(instances)} instances not ready ({names}): {first.message}; "
            "they are left as they are: inspect with `corral console NAME`, "
            "remove with `corral destroy NAME` and `corral delete NAME`"
        )
        self.instances = list(instances)
        self.last_lines: tuple[str, ...] = (
            first.last_lines if isinstance(first, GuestTimeout) else ()
        )


def instance_names(name: str, count: int) -> list[str]:
    """``name`` alone, or ``name-1`` .. ``name-N`` for a count above one.

    :raise InvalidInput: the count is out of range or a name is not valid.
    """
    if not 1 <= count <= MAX_COUNT:
        raise InvalidInput("count", f"{count} is out of range; launch 1 to {MAX_COUNT} at once")
    names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
    for each in names:
        try:
            check_name(each)
        except InvalidInput as exc:
            raise InvalidInput("name", exc.reason) from None
    return names


def _nic(port: int, isolated: bool, name: str = "net0") -> dict[str, object]:
    forward = {"protocol": "tcp", "host_addr": SSH_ADDR, "host_port": port, "guest_port": 22}
    return {"name": name, "forwards": [forward], "restrict": isolated}


def _nics(req: LaunchRequest, port: int | None) -> list[dict[str, object]]:
    """The NICs of an instance, ``net0``, ``net1``... in order: the first user-mode NIC has
    the SSH forward on ``port``."""
    if not req.networks:
        assert port is not None
        return [_nic(port, req.isolated)]
    nics: list[dict[str, object]] = []
    for index, nic in enumerate(req.networks):
        name = f"net{index}"
        if nic.network == USER_NETWORK and port is not None:
            nics.append(_nic(port, req.isolated, name))
            port = None
        elif nic.network == USER_NETWORK:
            nics.append({"name": name, "restrict": req.isolated})
        else:
            wanted: dict[str, object] = {"name": name, "kind": "network", "network": nic.network}
            if nic.ip is not None:
                wanted["ip"] = nic.ip
            if not nic.link:
                wanted["link"] = False
            nics.append(wanted)
    return nics


@dataclass(frozen=True)
class _Plan:
    """Everything checked; what each instance is made from."""

    names: list[str]
    #: The project's name.
    project: str
    image: ImageView
    itype: InstanceType
    key: KeyPairView
    disk: int
    user: str
    user_data: str | None


def plan(ctx: Corral, req: LaunchRequest) -> _Plan:
    """Check a launch without making anything.

    :raise InvalidInput: a bad name, count, disk size or user-data (naming the field).
    :raise NotFound: no such project, instance type, image (or not usable in the project) or
        key pair (or not the project's).
    :raise AlreadyExists: an instance name is taken.
    :raise QuotaExceeded: all instances together would take the project past a quota.
    :raise InsufficientCapacity: the host lacks memory, disk or CPUs for all instances.
    """
    from sqlalchemy import select

    from corral.access.quotas import Demand, check_project_quota
    from corral.cloudinit.render import SeedRequest, check_request
    from corral.compute.images import get_image
    from corral.compute.keys import get_key
    from corral.compute.ownership import image_usable, resolve_project
    from corral.compute.types import get_type
    from corral.store.models import ImageRow, KeyPairRow, VmRow

    names = instance_names(req.name, req.count)
    for name in names:  # a VM name may end in '-'; a host name may not
        try:
            check_request(SeedRequest(instance_id="i-0000000000000000", hostname=name))
        except InvalidInput as exc:
            raise InvalidInput("name", exc.reason) from None
    with ctx.db.session() as session:
        project = resolve_project(session, req.project)
        image_owner = session.scalars(
            select(ImageRow.project_id).where(ImageRow.name == req.image)
        ).first()
        key_owner = session.scalars(
            select(KeyPairRow.project_id).where(KeyPairRow.name == req.keypair)
        ).first()
        taken = list(session.scalars(select(VmRow.name).where(VmRow.name.in_(names))))
        _check_networks(session, req, project.id)
    if image_owner is None or not image_usable(image_owner, project.id):
        raise NotFound("image", req.image)
    image = get_image(ctx, req.image)
    itype = get_type(ctx.home, req.instance_type)
    if key_owner != project.id:
        raise NotFound("key pair", req.keypair)
    key = get_key(ctx, req.keypair)
    if taken:
        raise AlreadyExists("vm", taken[0])
    disk = itype.disk
    if req.disk_size is not None:
        try:
            disk = parse_size(req.disk_size)
        except ValueError as exc:
            raise InvalidInput("disk_size", str(exc)) from None
    if disk < image.virtual_size:
        field_name = "disk_size" if req.disk_size is not None else "instance_type"
        raise InvalidInput(
            field_name,
            f"{format_size(disk)} of disk is smaller than image {image.name!r} "
            f"({format_size(image.virtual_size)}); choose a larger type or --disk-size",
        )
    count = len(names)
    memory = _memory_mib(itype) * MIB  # what each instance's spec holds
    check_project_quota(
        ctx, project.id, Demand(count, count * itype.vcpus, count * memory, count * disk)
    )
    user_data = req.user_data
    if user_data is not None:
        _check_user_data(ctx, user_data, key.public_key)
    settings = load_settings(ctx.home)
    demand = capacity.Demand(count, itype.vcpus, itype.memory, disk)
    capacity.check(demand, capacity.host_free(ctx.home.vms), settings.capacity)
    return _Plan(names, project.name, image, itype, key, disk, image.ssh_user, user_data)


def _check_networks(session: Session, req: LaunchRequest, project_id: str) -> None:
    """:raise NotFound: a network is not the project's (or does not exist).
    :raise InvalidInput: (field ``networks``) no NIC SSH reaches: neither user-mode nor on
        a managed network."""
    from sqlalchemy import select

    from corral.compute.network_host import network_of
    from corral.store.models import NetworkRow

    reachable = req.user_nic
    for nic in req.networks:
        if nic.network == USER_NETWORK:
            continue
        row = session.scalars(
            select(NetworkRow).where(
                NetworkRow.name == nic.network, NetworkRow.project_id == project_id
            )
        ).first()
        if row is None:
            raise NotFound("network", nic.network)
        reachable = reachable or network_of(row).managed
    if not reachable:
        raise InvalidInput(
            "networks",
            "SSH needs a user-mode NIC or one on a managed (nat or isolated) network",
        )


#: Bytes in a MiB: instance types' memory goes into specs in whole MiB.
MIB = 1024 * 1024


def _memory_mib(itype: InstanceType) -> int:
    return itype.memory // MIB


def _check_user_data(ctx: Corral, text: str, public_key: str) -> None:
    """Render the user-data once (merging errors surface) and run ``cloud-init schema``."""
    from corral.cloudinit.render import SeedRequest, is_cloud_config, render_user_data
    from corral.cloudinit.schema import validate_cloud_config

    probe = SeedRequest(
        instance_id="i-0000000000000000",
        hostname="check",
        authorized_keys=(public_key,),
        user_data=text,
        nics=(("net0", "52:54:00:00:00:01"),),
    )
    render_user_data(probe)
    if is_cloud_config(text):
        validate_cloud_config(text)


def launch(ctx: Corral, req: LaunchRequest, progress: ProgressFn | None = None) -> list[Instance]:
    """Launch ``req.count`` instances (see the module docstring for the stages).

    :raise InvalidInput, NotFound, AlreadyExists, InsufficientCapacity: refused up front;
        nothing was made.
    :raise CorralError: making an instance failed; every instance was removed again.
    :raise LaunchFailed: some instances did not become ready in time; all are left running.
    """
    report = progress or _ignore
    checked = plan(ctx, req)
    instances: list[Instance] = []
    made: list[str] = []
    made_lock = threading.Lock()
    cancel = threading.Event()

    def make(name: str) -> Instance:
        return _make(ctx, req, checked, name, report, made, made_lock, cancel)

    try:
        with ThreadPoolExecutor(max_workers=len(checked.names)) as pool:
            futures = [pool.submit(make, name) for name in checked.names]
            errors: list[BaseException] = []
            for future in futures:
                try:
                    instances.append(future.result())
                except BaseException as exc:
                    cancel.set()
                    errors.append(exc)
        if errors:
            # The instance that failed, not one that stopped because another failed.
            raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
    except BaseException:
        cancel.set()
        _remove_all(ctx, made)
        raise
    if not req.wait:
        return instances
    deadline = time.monotonic() + req.timeout
    with ThreadPoolExecutor(max_workers=len(instances)) as pool:
        list(pool.map(lambda i: _await_ready(ctx, checked, i, deadline, report), instances))
    if any(i.error is not None for i in instances):
        raise LaunchFailed(instances)
    return instances


def _ignore(event: PhaseEvent) -> None:
    del event


class _Timer:
    """Reports a phase's begin and end (or failure) and records its duration."""

    def __init__(self, report: ProgressFn, instance: Instance, phase: Phase) -> None:
        self.report = report
        self.instance = instance
        self.phase: Phase = phase

    def __enter__(self) -> _Timer:
        self.start = time.monotonic()
        self.report(self._event("begin"))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        seconds = time.monotonic() - self.start
        status: Literal["end", "fail"] = "fail" if exc_type is not None else "end"
        if status == "end":
            self.instance.phases[self.phase] = seconds
        self.report(self._event(status, seconds))

    def _event(
        self, status: Literal["begin", "end", "fail"], seconds: float | None = None
    ) -> PhaseEvent:
        i = self.instance
        return PhaseEvent(
            i.name, self.phase, status, seconds, i.instance_id, i.port or None, i.host or None
        )


def _make(
    ctx: Corral,
    req: LaunchRequest,
    checked: _Plan,
    name: str,
    report: ProgressFn,
    made: list[str],
    made_lock: threading.Lock,
    cancel: threading.Event,
) -> Instance:
    """Clone, seed and start one instance (stage 1)."""
    from corral.cloudinit.render import SeedRequest, render_seed
    from corral.cloudinit.seed import write_seed

    instance_id = f"i-{uuid.uuid4().hex[:16]}"
    instance = Instance(name, instance_id, checked.user, SSH_ADDR, 0, checked.key.private_key_path)
    settings = load_settings(ctx.home)
    with _Timer(report, instance, "clone"):
        low, high = settings.launch.ssh_port_range
        with ports_lock(ctx):
            port: int | None = None
            if req.user_nic:
                port = pick_port(reserved_by_records(ctx), low, high, bindable(SSH_ADDR))
            create_req = CreateRequest(
                name=name,
                image=checked.image.name,
                vcpus=checked.itype.vcpus,
                memory=_memory_mib(checked.itype),
                disk_size=checked.disk,
                extra={"seed": True, "nics": _nics(req, port)},
                record={
                    "instance_type": checked.itype.name,
                    "keypair": checked.key.name,
                    "instance_id": instance_id,
                    "ssh_user": checked.user,
                },
                project=checked.project,
            )
            spec = create(ctx, create_req)
            with made_lock:
                made.append(name)
        if port is None:
            instance.host, instance.port = _network_address(ctx, spec), SSH_PORT
        else:
            instance.port = port
    if cancel.is_set():
        raise _Cancelled(name)
    with _Timer(report, instance, "seed"):
        paths_seed = ctx.home.vm_dir(name) / "seed.iso"
        files = render_seed(
            SeedRequest(
                instance_id=instance_id,
                hostname=name,
                authorized_keys=(checked.key.public_key,),
                user_data=checked.user_data,
                nics=tuple((nic.name, spec.nic_mac(i)) for i, nic in enumerate(spec.nics)),
            )
        )
        write_seed(paths_seed, files)
    if cancel.is_set():
        raise _Cancelled(name)
    with _Timer(report, instance, "start"):
        lifecycle.start(ctx, name, wait=False)
    return instance


def _network_address(ctx: Corral, spec: VmSpec) -> str:
    """The address SSH reaches an instance without a user-mode NIC at."""
    from corral.compute.vm_ports import first_address

    with ctx.db.session() as session:
        address = first_address(session, spec)
    assert address is not None  # the plan made sure a managed network is among its NICs
    return str(address)


class _Cancelled(CorralError):
    def __init__(self, name: str) -> None:
        super().__init__(f"launch of {name!r} cancelled: another instance failed")


def _remove_all(ctx: Corral, names: Sequence[str]) -> None:
    """Destroy and delete what a failed launch made (best effort, every one attempted)."""
    for name in names:
        with contextlib.suppress(StateError, NotFound):
            lifecycle.destroy(ctx, name)
        with contextlib.suppress(NotFound):
            delete(ctx, name)


def _await_ready(
    ctx: Corral, checked: _Plan, instance: Instance, deadline: float, report: ProgressFn
) -> None:
    """Wait for the ready marker, then SSH (stage 2); failures are kept on the instance."""
    from corral.compute import records

    with ctx.db.session() as session:
        vm = records.load(ctx, session, instance.name)
        proc = vm.process
        serial_log = vm.paths.serial_log
    marker = checked.image.ready_marker
    try:
        with _Timer(report, instance, "boot"):
            if marker is not None:
                wait_for_line(
                    instance.name,
                    serial_log,
                    marker,
                    0,
                    max(0.0, deadline - time.monotonic()),
                    lambda: proc is not None and process.is_alive(proc),
                    interval=0.02,
                )
        with _Timer(report, instance, "ready"):
            wait_for_sshd(
                instance.name, instance.host, instance.port, max(0.0, deadline - time.monotonic())
            )
    except GuestTimeout as exc:
        if not exc.last_lines:
            exc = GuestTimeout(exc.vm, exc.waited_for, exc.seconds, process.tail(Path(serial_log)))
        instance.status, instance.error = "not ready", exc
        return
    except CorralError as exc:
        instance.status, instance.error = "not ready", exc
        return
    learn_host_keys(ctx, instance.name, serial_log)
    instance.status = "ready"
    with contextlib.suppress(CorralError):  # it answered SSH; gone again since, it still did
        instance.ssh_command = ssh_command(ctx, instance.name)


def ssh_command(ctx: Corral, name: str) -> list[str]:
    """The OpenSSH command line that logs in to ``name`` from the daemon's host (with the key
    pair's recorded private key path, whether or not that file is on this host)."""
    found: SshTarget = access(ctx, name).on_host()
    return ssh_argv(found)


__all__ = [
    "MAX_COUNT",
    "PHASES",
    "SSH_PORT",
    "Instance",
    "LaunchFailed",
    "LaunchRequest",
    "PhaseEvent",
    "instance_names",
    "launch",
    "plan",
]
