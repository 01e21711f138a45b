"""``/vms/{name}/monitor``, ``/vms/{name}/reset`` and ``/vms/{name}/cdrom``: QEMU's monitor,
the reset button and the CD-ROM drive of one VM.

A monitor command answers at once with QEMU's answer, an error QEMU gave included (``error``
in the body, status 200): admins send any command, operators the read-only queries that
:mod:`corral.compute.monitor` lists, viewers none (403). Inserting an ISO names a file on the
daemon's host, so only admins insert; operators eject. All of them are quick and answer at
once, not with a task; each is in the audit log with its command or file, refusals included.
"""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.vms import vm_read
from corral.api.schemas import ERRORS, ErrorRead, VmRead
from corral.api.schemas.monitor import CdromCreate, CdromRead, MonitorCreate, MonitorRead

router = APIRouter(prefix="/vms", tags=["monitor"], responses=ERRORS)


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of the monitor and reset endpoints.
MONITOR_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not send this command (viewers send none)."),
    404: _error("No such VM (or not the caller's)."),
    409: _error("The VM is not running or paused (the message names its state)."),
}
#: ``responses=`` of the CD-ROM endpoints.
CDROM_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not change the drive (inserting a host file: admins)."),
    404: _error("No such VM (or not the caller's)."),
    409: _error("The VM is starting or stopping (named), or runs without a CD-ROM drive."),
}


@router.post("/{name}/monitor", responses=MONITOR_RESPONSES)
def monitor_command(
    ctx: CorralDep, principal: PrincipalDep, name: str, body: MonitorCreate
) -> MonitorRead:
    """Send one QMP or HMP command to a running or paused VM's monitor; QEMU's answer."""
    from corral.compute.monitor import parse_hmp, parse_qmp, send

    command = parse_qmp(body.qmp) if body.qmp is not None else parse_hmp(body.hmp or "")
    result = send(ctx, principal, name, command)
    if result.error_class is not None:
        error = {"class": result.error_class, "desc": result.error or ""}
        return MonitorRead.model_validate({"error": error})
    return MonitorRead.model_validate({"return": result.returned})


@router.post("/{name}/reset", responses=MONITOR_RESPONSES)
def reset_vm(ctx: CorralDep, principal: PrincipalDep, name: str) -> VmRead:
    """Reset a running or paused VM at once, as its reset button does; the VM."""
    from corral.compute.inventory import info
    from corral.compute.monitor import reset

    reset(ctx, principal, name)
    return vm_read(info(ctx, name))


@router.post("/{name}/cdrom", responses=CDROM_RESPONSES)
def insert_cdrom(
    ctx: CorralDep, principal: PrincipalDep, name: str, body: CdromCreate
) -> CdromRead:
    """Insert an ISO into the VM's CD-ROM drive (live when it runs), recorded for its next
    start; a VM that is not running gets a drive if it had none."""
    from corral.compute.monitor import change_medium

    drive = change_medium(ctx, principal, name, body.path, body.boot)
    return CdromRead(path=drive.path, boot=drive.boot)


@router.delete("/{name}/cdrom", responses=CDROM_RESPONSES)
def eject_cdrom(ctx: CorralDep, principal: PrincipalDep, name: str) -> CdromRead:
    """Eject the CD-ROM drive's medium (live when the VM runs); the drive stays, empty."""
    from corral.compute.monitor import change_medium

    drive = change_medium(ctx, principal, name, None)
    return CdromRead(path=drive.path, boot=drive.boot)
