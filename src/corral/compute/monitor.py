"""QEMU's monitor for users: QMP and HMP commands, a hard reset, the CD-ROM drive's medium.

Who may send what to a VM's monitor (:func:`check_command`, pure)::

    role       QMP                                   HMP
    admin      any command                           any command line
    operator   the read-only queries of               ``info`` with a topic of
               :data:`OPERATOR_QMP`                  :data:`OPERATOR_HMP`, nothing more
    viewer     nothing                               nothing

Operators change a VM through the named operations (pause, resume, stop, reboot, reset,
``cdrom``), which keep the record in step; a raw command could do anything QEMU can, host
files included, so only admins send those. After any command the record is reconciled with
QEMU's run state, so a raw ``stop`` shows the VM ``paused``.

The CD-ROM drive (an ``ide-cd`` device, :data:`~corral.qemu.argv.CDROM_DEVICE`) takes an ISO
on the daemon's host; naming a host file is for admins. In a running VM the new medium is
added as explicit ``file`` and ``raw`` nodes (read-only) and swapped in through the open tray;
:func:`medium_steps` plans the QMP commands with the undo of each, and
:func:`apply_steps` runs them, undoing what was done when one fails. The spec records the
medium, so the next start has it too. Every command and change is in the audit log (``vm.monitor``,
``vm.reset``, ``vm.cdrom.insert``, ``vm.cdrom.eject``), refusals included.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy import update as sql_update

from corral.access.audit import audited
from corral.access.principal import Action, Principal
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.lifecycle import holding
from corral.compute.records import Vm
from corral.compute.state import Op, VmState, require
from corral.errors import Conflict, Forbidden, InvalidInput, MonitorError
from corral.qemu.argv import CDROM_DEVICE, CDROM_NODE, cdrom_medium
from corral.qemu.monitor import Monitor
from corral.spec.vm import CdromSpec
from corral.store.models import ProjectRow, VmRow

#: QMP commands an operator may send: queries that change nothing and name no host secret.
OPERATOR_QMP = frozenset(
    {
        "query-status",
        "query-block",
        "query-blockstats",
        "query-cpus-fast",
        "query-commands",
        "query-name",
        "query-uuid",
        "query-version",
        "query-kvm",
        "query-chardev",
        "query-memory-size-summary",
        "query-balloon",
        "query-vnc",
    }
)
#: HMP ``info`` topics an operator may ask for, the HMP faces of the same queries.
OPERATOR_HMP = frozenset(
    {"status", "block", "blockstats", "cpus", "name", "uuid", "version", "kvm", "chardev", "vnc"}
)
#: A QMP command name as QAPI spells them.
_QMP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: Longest HMP command line.
MAX_HMP = 1000
#: An ISO 9660 image has its volume descriptor's signature at this offset.
_ISO_MAGIC_AT = 32769
_ISO_MAGIC = b"CD001"


# -- commands: pure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorCommand:
    """One command for a VM's monitor: QMP (``execute`` with its arguments) or an HMP line."""

    #: The QMP command name; ``None`` for an HMP command line.
    execute: str | None = None
    arguments: dict[str, Any] | None = None
    #: An HMP command line, run through ``human-monitor-command``.
    hmp: str | None = None

    def describe(self) -> dict[str, Any]:
        """The command as the audit log records it."""
        if self.hmp is not None:
            return {"hmp": self.hmp}
        return {"qmp": {"execute": self.execute, "arguments": self.arguments or {}}}


@dataclass(frozen=True)
class MonitorResult:
    """QEMU's answer: its ``return`` (or HMP output), or the error it answered with."""

    #: QMP's ``return`` value; for HMP, the output text.
    returned: Any = None
    #: QEMU's error class (``GenericError``, ``CommandNotFound``) when it refused the command.
    error_class: str | None = None
    #: QEMU's description of that error.
    error: str | None = None


def parse_qmp(message: dict[str, Any]) -> MonitorCommand:
    """A QMP message (``{"execute": NAME, "arguments": {...}}``) as a command.

    :raise InvalidInput: (field ``qmp``) keys other than ``execute`` and ``arguments``, a
        name QAPI would not spell, arguments that are not an object, or the capabilities
        negotiation (done by corral).
    """
    extra = set(message) - {"execute", "arguments"}
    if extra:
        raise InvalidInput("qmp", f"unknown keys {sorted(extra)}; use execute and arguments")
    name = message.get("execute")
    if not isinstance(name, str) or not _QMP_NAME.match(name):
        raise InvalidInput("qmp.execute", "must be a QMP command name, e.g. query-status")
    if name == "qmp_capabilities":
        raise InvalidInput("qmp.execute", "capabilities are negotiated by corral")
    arguments = message.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise InvalidInput("qmp.arguments", "must be an object")
    return MonitorCommand(execute=name, arguments=arguments)


def parse_hmp(line: str) -> MonitorCommand:
    """An HMP command line as a command.

    :raise InvalidInput: (field ``hmp``) empty, too long, or with control characters.
    """
    if not line.strip():
        raise InvalidInput("hmp", "must not be empty")
    if len(line) > MAX_HMP:
        raise InvalidInput("hmp", f"is {len(line)} characters; the limit is {MAX_HMP}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in line):
        raise InvalidInput("hmp", "must be one line without control characters")
    return MonitorCommand(hmp=" ".join(line.split()))


def check_command(principal: Principal, name: str, command: MonitorCommand) -> None:
    """Check ``principal`` may send ``command`` to VM ``name`` (see the module's table).

    :raise Forbidden: the role may not send it.
    """
    if principal.is_admin:
        return
    allowed = False
    if principal.role.value == "operator":
        if command.hmp is not None:
            words = command.hmp.split()
            allowed = len(words) == 2 and words[0] == "info" and words[1] in OPERATOR_HMP
        else:
            allowed = command.execute in OPERATOR_QMP
    if not allowed:
        what = command.hmp if command.hmp is not None else command.execute
        raise Forbidden(
            principal.name, principal.role.value, f"send {what!r} to the monitor of", f"vm {name!r}"
        )


# -- the CD-ROM medium: pure plan ---------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One QMP command of a medium change, with the command that undoes it."""

    command: str
    arguments: dict[str, object]
    undo: tuple[str, dict[str, object]] | None = None
    #: Tidying after the change is made: a failure leaves an unused node, not a broken drive.
    cleanup: bool = False


def tray_medium(blocks: Sequence[dict[str, Any]], device: str = CDROM_DEVICE) -> str | None:
    """The node name of the medium in drive ``device``, from ``query-block``'s answer.

    :raise Conflict: the VM has no such drive.
    """
    for block in blocks:
        qdev = str(block.get("qdev", ""))
        if qdev == device or qdev.startswith(f"/machine/peripheral/{device}/"):
            inserted = block.get("inserted")
            return None if inserted is None else str(inserted["node-name"])
    raise Conflict("the VM runs without a CD-ROM drive (IDE has no hotplug): shut it off first")


def medium_steps(current: str | None, path: str | None) -> list[Step]:
    """The QMP commands that put the ISO ``path`` (``None``: nothing) into the drive in place of
    the medium whose node is ``current`` (``None``: the drive is empty).

    The new medium is added first (a file QEMU cannot open changes nothing), under a node name
    other than the current one; the old one's nodes are removed last.
    """
    tray: dict[str, object] = {"id": CDROM_DEVICE}
    steps: list[Step] = []
    node = CDROM_NODE if current != CDROM_NODE else f"{CDROM_NODE}-1"
    if path is not None:
        for options in cdrom_medium(path, node):
            steps.append(
                Step("blockdev-add", options, ("blockdev-del", {"node-name": options["node-name"]}))
            )
    steps.append(Step("blockdev-open-tray", {**tray, "force": True}, ("blockdev-close-tray", tray)))
    if current is not None:
        steps.append(
            Step(
                "blockdev-remove-medium",
                tray,
                ("blockdev-insert-medium", {**tray, "node-name": current}),
            )
        )
    if path is not None:
        steps.append(
            Step(
                "blockdev-insert-medium",
                {**tray, "node-name": node},
                ("blockdev-remove-medium", tray),
            )
        )
    steps.append(Step("blockdev-close-tray", tray, ("blockdev-open-tray", {**tray, "force": True})))
    if current is not None:
        for name in (current, f"{current}.file"):
            steps.append(Step("blockdev-del", {"node-name": name}, cleanup=True))
    return steps


def apply_steps(mon: Monitor, steps: Sequence[Step]) -> None:
    """Run ``steps``; when one fails, undo the ones done, newest first, and raise its error.

    :raise MonitorError: a step (not a clean-up) failed; the drive is as it was.
    """
    done: list[Step] = []
    for step in steps:
        try:
            mon.execute(step.command, step.arguments)
        except MonitorError:
            if step.cleanup:
                continue
            for previous in reversed(done):
                if previous.undo is not None:
                    # The original failure is what the caller needs to hear.
                    with contextlib.suppress(MonitorError):
                        mon.execute(*previous.undo)
            raise
        done.append(step)


# -- operations ----------------------------------------------------------------------------------


def _project(ctx: Corral, principal: Principal, name: str, action: Action) -> str | None:
    """VM ``name``'s project name, for the audit log, once ``principal`` may take ``action``.

    :raise NotFound: no such VM, or not in the caller's projects.
    :raise Forbidden: the caller's role may not take ``action``.
    """
    with ctx.db.session() as session:
        row = find_owned(session, principal, VmRow, "vm", name, action)
        return session.scalars(
            select(ProjectRow.name).where(ProjectRow.id == row.project_id)
        ).first()


def _prepare(ctx: Corral, name: str, op: Op) -> Vm:
    """Reconcile the record and check ``op`` may run; the caller holds the VM's lock.

    :raise StateError: it may not, naming the state.
    """
    with ctx.db.session() as session:
        vm = records.load(ctx, session, name)
        records.reconcile(vm)
        require(name, op, vm.state)
        return vm


def _reconcile(ctx: Corral, name: str) -> VmState:
    with ctx.db.session() as session:
        return records.reconcile(records.load(ctx, session, name))


def send(ctx: Corral, principal: Principal, name: str, command: MonitorCommand) -> MonitorResult:
    """Send one command to a running or paused VM's monitor; QEMU's error is an answer too.

    :raise NotFound: no such VM (or not the caller's).
    :raise Forbidden: the caller may not send this command (a viewer may send none).
    :raise StateError: the VM is not running or paused.
    :raise MonitorError: the monitor could not be reached.
    """
    project = _project_of(ctx, name)
    with audited(ctx, principal, "vm.monitor", "vm", name, project, command.describe()) as op:
        _project(ctx, principal, name, Action.OPERATE)
        check_command(principal, name, command)
        with holding(ctx, name):
            vm = _prepare(ctx, name, Op.MONITOR)
            result = _execute(vm, command)
            _reconcile(ctx, name)
        op.detail["outcome"] = result.error_class or "ok"
    return result


def _execute(vm: Vm, command: MonitorCommand) -> MonitorResult:
    with Monitor(vm.paths.qmp_socket) as mon:
        try:
            if command.hmp is not None:
                return MonitorResult(returned=mon.human_monitor_command(command.hmp))
            assert command.execute is not None
            return MonitorResult(returned=mon.execute(command.execute, command.arguments))
        except MonitorError as exc:
            if exc.error_class is None:
                raise
            return MonitorResult(error_class=exc.error_class, error=exc.reason)


def _project_of(ctx: Corral, name: str) -> str | None:
    """VM ``name``'s project name, for the audit log (``None``: no such VM)."""
    if "\x00" in name:
        return None
    with ctx.db.session() as session:
        query = select(ProjectRow.name).join(VmRow, VmRow.project_id == ProjectRow.id)
        return session.scalars(query.where(VmRow.name == name)).first()


def reset(ctx: Corral, principal: Principal, name: str) -> None:
    """Reset a running or paused VM at once, as its reset button does (the guest is not asked).

    :raise StateError: the VM is not running or paused.
    """
    with audited(ctx, principal, "vm.reset", "vm", name, _project_of(ctx, name)):
        _project(ctx, principal, name, Action.OPERATE)
        with holding(ctx, name):
            vm = _prepare(ctx, name, Op.RESET)
            with Monitor(vm.paths.qmp_socket) as mon:
                mon.system_reset()


def check_iso(path: str) -> None:
    """Check ``path`` is an ISO 9660 image on this host that corral can read.

    :raise InvalidInput: (field ``path``) not absolute, missing, not a regular file, or not
        ISO 9660.
    """
    if not path.startswith("/") or "\x00" in path:
        raise InvalidInput("path", "must be an absolute path on the daemon's host")
    try:
        if not Path(path).is_file():  # a FIFO would block the open
            raise InvalidInput("path", f"{path!r} is not a regular file")
        with Path(path).open("rb") as file:
            file.seek(_ISO_MAGIC_AT)
            magic = file.read(len(_ISO_MAGIC))
    except OSError as exc:
        raise InvalidInput("path", f"{path!r} cannot be read: {exc.strerror}") from None
    if magic != _ISO_MAGIC:
        raise InvalidInput("path", f"{path!r} is not an ISO 9660 image")


def check_drive(vm: Vm, path: str | None, boot: bool) -> None:
    """Check VM ``vm`` can take the medium change (pure: the spec only).

    :raise InvalidInput: a drive on microvm (no IDE), or ``boot`` on a kernel-booted VM.
    :raise Conflict: ejecting from a VM without a drive.
    """
    if path is None and vm.spec.cdrom is None:
        raise Conflict(f"vm {vm.name!r} has no CD-ROM drive")
    if vm.spec.machine == "microvm" and vm.spec.cdrom is None:
        raise InvalidInput("path", "machine 'microvm' has no IDE bus for a CD-ROM drive")
    if boot and vm.spec.boot.kind != "firmware":
        raise InvalidInput("boot", f"vm {vm.name!r} boots a kernel, not through firmware")


def change_medium(
    ctx: Corral, principal: Principal, name: str, path: str | None, boot: bool = False
) -> CdromSpec:
    """Insert the ISO ``path`` into VM ``name``'s CD-ROM drive, or eject it (``path=None``).

    A VM that is not running gets the change in its spec (a drive too, if it had none); a
    running or paused one also gets it at once, through its tray.

    :param boot: boot from the ISO (firmware boot), from the next start on.
    :return: the drive as the spec now has it.
    :raise Forbidden: inserting names a host file, which only admins may.
    :raise InvalidInput: the file is not a readable ISO 9660 image; ``boot`` on a VM that
        boots a kernel.
    :raise StateError: the VM is starting or stopping.
    :raise Conflict: the VM runs without a drive.
    """
    verb = "vm.cdrom.insert" if path is not None else "vm.cdrom.eject"
    asked = {"path": path, "boot": boot} if path is not None else {}
    with audited(ctx, principal, verb, "vm", name, _project_of(ctx, name), asked):
        _project(ctx, principal, name, Action.OPERATE)
        if path is not None:
            if not principal.is_admin:
                raise Forbidden(
                    principal.name, principal.role.value, "insert a host file into", f"vm {name!r}"
                )
            check_iso(path)
        with holding(ctx, name):
            vm = _prepare(ctx, name, Op.CDROM)
            check_drive(vm, path, boot)
            cdrom = CdromSpec(path=path, boot=boot and path is not None)
            spec = vm.spec.model_copy(update={"cdrom": cdrom})
            if vm.state.active:
                with Monitor(vm.paths.qmp_socket) as mon:
                    apply_steps(mon, medium_steps(tray_medium(mon.query_block()), path))
            with ctx.db.session() as session:
                session.execute(
                    sql_update(VmRow)
                    .where(VmRow.id == vm.row.id)
                    .values(spec=spec.model_dump_json())
                )
            return cdrom
