"""Defining and deleting VMs: the record, the directory and the disks, all or nothing.

A VM belongs to a project (``default`` unless told otherwise) and counts against its quota:
one instance, its vCPUs, its memory and the provisioned size of its disks (a clone's virtual
size: the size asked for, or its image's). The quota is checked twice: once before any disk
is cloned (a quick refusal), and again, atomically with the insert of the record, under the
project's lock (:func:`corral.access.quotas.reserving`), so that two concurrent creates that
would each fit but not both never both succeed.
"""

from __future__ import annotations

import re
import shutil
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.access.quotas import check_project_quota, demand_of, reserving
from corral.compute import records
from corral.compute.addresses import release_ports
from corral.compute.clone import check_no_linked_clones
from corral.compute.context import Corral
from corral.compute.lifecycle import Progress, holding, quiet, vm_lock
from corral.compute.locks import ObjectLock
from corral.compute.network_host import sync_host
from corral.compute.ownership import image_usable, resolve_project
from corral.compute.state import Op, VmState, require
from corral.compute.vm_ports import allocate_vm_ports, host_change
from corral.errors import AlreadyExists, HostError, InUse, InvalidInput, NotFound
from corral.qemu.argv import NETBOOT_ROM
from corral.spec import parse
from corral.spec.vm import NAME_PATTERN, VmSpec
from corral.store.models import ImageRow, VmRow, VolumeRow

#: What firmware boots first.
BootFrom = Literal["disk", "cdrom", "network"]
#: Where QEMU looks for option ROMs on Debian (``qemu-system-x86_64 -L help``).
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")


#: The name that, in place of a virtual network's, asks for a user-mode NAT NIC.
USER_NETWORK = "user"


@dataclass(frozen=True)
class NetworkNic:
    """A NIC asked for: on virtual network ``network`` (or user-mode NAT)."""

    network: str
    #: A fixed address on a managed network; ``None``: the network assigns one.
    ip: str | None = None
    #: Carrier up, or down (the card is there and passes no traffic).
    link: bool = True


@dataclass(frozen=True)
class CreateRequest:
    """What ``corral create`` asks for; turned into a :class:`VmSpec` with the image's hints."""

    name: str
    image: str | None = None
    vcpus: int = 1
    memory: str | int = "512M"
    #: Virtual size of the root disk (grows the image's); ``None`` keeps the image's size.
    disk_size: str | int | None = None
    #: Extra blank disks' sizes, named ``data1``, ``data2``, ...
    data_disks: tuple[str | int, ...] = ()
    machine: str = "pc"
    cpu: str | None = None
    #: Host port forwards: ``[tcp:][ADDR:]HOSTPORT:GUESTPORT``.
    forwards: tuple[str, ...] = ()
    vnc: bool = False
    #: The display mode (:data:`~corral.spec.vm.DisplayMode`); ``None``: as ``vnc`` says.
    display: str | None = None
    #: Firmware for VMs that boot from disk (images without a kernel).
    firmware: str = "bios"
    #: Extra fields merged into the spec (advanced use and tests).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Set on the VM's record: what ``corral launch`` knows of it (``instance_type``,
    #: ``keypair``, ``instance_id``, ``ssh_user``).
    record: dict[str, str | None] = field(default_factory=dict)
    #: The project the VM goes into, by name; ``None`` is ``default``.
    project: str | None = None
    #: Host path of an ISO for a CD-ROM drive (the caller checked it may name host files).
    cdrom: str | None = None
    #: What firmware boots first: ``disk``, ``cdrom`` or ``network`` (the NIC's iPXE ROM);
    #: ``None``: the CD-ROM when there is one, else the disk.
    boot: BootFrom | None = None
    #: The VM's NICs, in order: on virtual networks, or :data:`USER_NETWORK` for user-mode
    #: NAT (the one ``forwards`` go to); empty: one user-mode NIC.
    networks: tuple[NetworkNic, ...] = ()


_FORWARD = re.compile(
    r"^(?:(?P<proto>tcp|udp):)?(?:(?P<addr>\d{1,3}(?:\.\d{1,3}){3}):)?"
    r"(?P<host>\d{1,5}):(?P<guest>\d{1,5})$"
)


def parse_forward(text: str) -> dict[str, Any]:
    """``tcp:127.0.0.1:2222:22`` -> a :class:`~corral.spec.vm.PortForward` dict.

    :raise InvalidInput: not of the form ``[tcp|udp:][ADDR:]HOSTPORT:GUESTPORT``.
    """
    match = _FORWARD.match(text)
    if not match:
        raise InvalidInput("forward", f"{text!r} is not [tcp|udp:][ADDR:]HOSTPORT:GUESTPORT")
    out: dict[str, Any] = {
        "protocol": match["proto"] or "tcp",
        "host_port": int(match["host"]),
        "guest_port": int(match["guest"]),
    }
    if match["addr"]:
        out["host_addr"] = match["addr"]
    return out


def build_spec(req: CreateRequest, image: ImageRow | None) -> VmSpec:
    """The spec for ``req`` (pure, given the image record).

    :raise InvalidInput: naming the offending field.
    """
    disks: list[dict[str, Any]] = []
    boot: dict[str, Any] = {"kind": "firmware", "firmware": req.firmware}
    boot_from = req.boot or ("cdrom" if req.cdrom is not None else "disk")
    if boot_from == "cdrom" and req.cdrom is None:
        raise InvalidInput("boot", "booting from the CD-ROM needs an ISO in it (cdrom)")
    if boot_from != "disk" and image is not None and image.kernel:
        raise InvalidInput(
            "boot",
            f"image {image.name!r} boots its kernel directly; {boot_from} boot needs firmware",
        )
    if image is not None:
        root: dict[str, Any] = {"name": "root", "image": image.name}
        if req.disk_size is not None:
            root["size"] = req.disk_size
        disks.append(root)
        if image.kernel:
            boot = {"kind": "kernel", "kernel": image.kernel, "cmdline": image.cmdline}
            if image.initrd:
                boot["initrd"] = image.initrd
    elif req.disk_size is not None:
        disks.append({"name": "root", "size": req.disk_size})
    for index, size in enumerate(req.data_disks, start=1):
        disks.append({"name": f"data{index}", "size": size})
    data: dict[str, Any] = {
        "name": req.name,
        "uuid": str(uuid.uuid4()),
        "vcpus": req.vcpus,
        "memory": req.memory,
        "machine": req.machine,
        "cpu": req.cpu,
        "disks": disks,
        "boot": boot,
        "nics": _nics(req, boot_from == "network"),
    }
    if req.cdrom is not None:
        data["cdrom"] = {"path": req.cdrom, "boot": boot_from == "cdrom"}
    elif not req.machine.startswith("microvm"):
        # An empty drive, so that `corral cdrom insert` works while the VM runs (IDE has no
        # hotplug: a drive added later waits for the next start).
        data["cdrom"] = {"path": None}
    if req.vnc:
        data["vnc"] = {"listen": "unix"}
    if req.display is not None:
        data["display"] = req.display
    data.update(req.extra)
    return parse(VmSpec, data)


def _nics(req: CreateRequest, netboot: bool) -> list[dict[str, Any]]:
    """The NICs of ``req``, named ``net0``, ``net1``... in order; the first boots from the
    network when ``netboot``.

    :raise InvalidInput: port forwards without a user-mode NIC (field ``forwards``).
    """
    asked = req.networks or (NetworkNic(USER_NETWORK),)
    forwards = [parse_forward(f) for f in req.forwards]
    if forwards and all(n.network != USER_NETWORK for n in asked):
        raise InvalidInput(
            "forwards", f"port forwards need a user-mode NIC (network {USER_NETWORK!r})"
        )
    nics: list[dict[str, Any]] = []
    for index, wanted in enumerate(asked):
        nic: dict[str, Any] = {"name": f"net{index}", "boot": netboot and index == 0}
        if wanted.network == USER_NETWORK:
            nic.update(forwards=forwards)
            forwards = []  # to the first user-mode NIC only
        else:
            nic.update(kind="network", network=wanted.network, ip=wanted.ip)
        if not wanted.link:
            nic["link"] = False
        nics.append(nic)
    return nics


def check_ports_free(ctx: Corral, spec: VmSpec) -> None:
    """:raise InvalidInput: a host port ``spec`` forwards is already another VM's (the VM
    of ``spec``'s own name does not count: its record is what ``spec`` replaces)."""
    wanted = {
        (f.protocol, f.host_port): index
        for index, nic in enumerate(spec.nics)
        for f in nic.forwards
    }
    if not wanted:
        return
    with ctx.db.session() as session:
        others = select(VmRow.name, VmRow.spec).where(VmRow.name != spec.name)
        for name, raw in session.execute(others):
            other = VmSpec.model_validate_json(raw)
            for nic in other.nics:
                for f in nic.forwards:
                    if (f.protocol, f.host_port) in wanted:
                        raise InvalidInput(
                            f"nics.{wanted[(f.protocol, f.host_port)]}.forwards",
                            f"host port {f.protocol}/{f.host_port} is forwarded by vm "
                            f"{name!r} already; choose another port",
                        )


def check_boot_media(spec: VmSpec, firmware_dirs: tuple[str, ...] = FIRMWARE_DIRS) -> None:
    """Check the host has what ``spec`` boots from: a readable ISO in its CD-ROM drive, the
    iPXE ROM of a NIC that boots from the network.

    :raise InvalidInput: (field ``cdrom``) the ISO is missing, unreadable or not ISO 9660.
    :raise HostError: the ROM is in none of QEMU's firmware directories (package ``ipxe-qemu``).
    """
    from corral.compute.monitor import check_iso

    if spec.cdrom is not None and spec.cdrom.path is not None:
        try:
            check_iso(spec.cdrom.path)
        except InvalidInput as exc:
            raise InvalidInput("cdrom", exc.reason) from None
    for nic in spec.nics:
        if not nic.boot:
            continue
        rom = NETBOOT_ROM[nic.model]
        if not any((Path(d) / rom).is_file() for d in firmware_dirs):
            raise HostError(
                f"network boot of a {nic.model} NIC needs QEMU's iPXE ROM {rom!r}, which is in "
                f"none of {', '.join(firmware_dirs)}: install the ipxe-qemu package"
            )


def check_name(name: str) -> None:
    """:raise InvalidInput: ``name`` is not a valid VM name."""
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput(
            "name",
            f"{name!r} is not allowed: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter or digit",
        )


def create(ctx: Corral, req: CreateRequest) -> VmSpec:
    """Define a VM in ``req.project``: clone its disks and record it in state ``defined``.

    Nothing is left behind on failure: the directory and its disks go with the error.

    :raise InvalidInput: a field is wrong for the spec or the host.
    :raise AlreadyExists: the name is taken.
    :raise NotFound: the project does not exist, or the image does not exist or is neither
        the project's nor shared (in ``default``, see :mod:`corral.compute.ownership`).
    :raise QuotaExceeded: the VM would take the project past a quota (naming it); checked
        before any disk is cloned, and again atomically with the insert.
    """
    check_name(req.name)
    with ExitStack() as locks:
        locks.enter_context(vm_lock(ctx, req.name))
        if req.image is not None:
            # Held until the record exists, so the image cannot be deleted under the clone.
            locks.enter_context(ObjectLock(ctx.home.locks, "image", req.image))
        return _create_locked(ctx, req)


def _create_locked(ctx: Corral, req: CreateRequest) -> VmSpec:
    from corral.spec.validate import validate_spec
    from corral.storage.disks import create_blank, create_clone

    with ctx.db.session() as session:
        project_id = resolve_project(session, req.project).id
        if session.scalars(select(VmRow.id).where(VmRow.name == req.name)).first():
            raise AlreadyExists("vm", req.name)
        image = None
        if req.image is not None:
            image = session.scalars(select(ImageRow).where(ImageRow.name == req.image)).first()
            if image is None or not image_usable(image.project_id, project_id):
                raise NotFound("image", req.image)
    spec = build_spec(req, image)
    validate_spec(spec, ctx.caps)
    check_boot_media(spec)
    check_ports_free(ctx, spec)
    demand = demand_of(spec, {image.name: image.virtual_size} if image is not None else {})
    check_project_quota(ctx, project_id, demand)
    paths = records.vm_paths(ctx, spec)
    root = Path(paths.root)
    # A directory without a record is what an interrupted create leaves; we hold the name.
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700, parents=True)
    try:
        for disk in spec.disks:
            files = paths.disks[disk.name]
            if files.backing:
                create_clone(Path(files.backing[0].path), Path(files.top.path), disk.size)
            else:
                assert disk.size is not None
                create_blank(Path(files.top.path), disk.size)
        with host_change(ctx, spec) as networked, reserving(ctx, project_id, demand) as session:
            row = VmRow(
                id=str(spec.uuid),
                name=spec.name,
                project_id=project_id,
                spec=spec.model_dump_json(),
                state=VmState.DEFINED.value,
                image=req.image,
                ready_marker=image.ready_marker if image else None,
                reason="defined",
                **_record_fields(req.record),
            )
            session.add(row)
            if networked:
                spec = allocate_vm_ports(session, row, spec)
                sync_host(ctx, session)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return spec


#: VM record fields a :class:`CreateRequest` may set.
_RECORD_FIELDS = frozenset({"instance_type", "keypair", "instance_id", "ssh_user"})


def _record_fields(fields: dict[str, str | None]) -> dict[str, str | None]:
    unknown = set(fields) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"CreateRequest.record: unknown fields {sorted(unknown)}")
    return fields


def _check_no_volumes(session: Session, row: VmRow) -> None:
    """:raise InUse: volumes are attached to the VM (naming them): they are detached first,
    as a VM's deletion never decides the fate of a project's volume."""
    query = select(VolumeRow.name).where(VolumeRow.attached_to == row.id).order_by(VolumeRow.name)
    names = list(session.scalars(query))
    if names:
        raise InUse("vm", row.name, [f"volume {n}" for n in names])


def delete(
    ctx: Corral, name: str, keep_disks: bool = False, progress: Progress = quiet
) -> list[Path]:
    """Delete a stopped VM with its directory; ``keep_disks`` moves its disks aside first.

    :param progress: told of each phase (see :mod:`corral.compute.lifecycle`).
    :return: where kept disks now are.
    :raise StateError: the VM is running.
    :raise InUse: volumes are attached to it (naming them).
    """
    with holding(ctx, name, progress):
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            require(name, Op.DELETE, records.reconcile(vm))
            _check_no_volumes(session, vm.row)
            check_no_linked_clones(session, "vm", name, under=vm.paths.root)
            spec = vm.spec
        # Reported between transactions: a task's report writes to the same database.
        progress(10, "moving the disks aside, deleting the rest" if keep_disks else "deleting")
        kept: list[Path] = []
        with host_change(ctx, spec) as networked, ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            if keep_disks:
                dest_dir = ctx.home.root / "disks"
                dest_dir.mkdir(exist_ok=True, mode=0o700)
                for disk_name, files in vm.paths.disks.items():
                    dest = dest_dir / f"{name}-{disk_name}-{vm.spec.uuid.hex[:8]}.qcow2"
                    Path(files.top.path).replace(dest)
                    kept.append(dest)
            if networked:
                release_ports(session, vm.row)
            session.delete(vm.row)
            session.flush()
            if networked:
                sync_host(ctx, session)
        shutil.rmtree(vm.paths.root, ignore_errors=True)
        progress(95, "deleted")
        return kept
