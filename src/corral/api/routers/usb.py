"""``/vms/{name}/usb``: a VM's USB devices; ``/host/usb``: the host's (admins only).

Adding or removing one is quick and answers at once, not with a task: a change of record
on a VM that is not running, hotplug as well on a running one. Each is in the audit log.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import ERRORS, ErrorRead
from corral.api.schemas.usb import HostUsbRead, UsbCreate, UsbRead
from corral.compute.usb import UsbView

router = APIRouter(prefix="/vms", tags=["usb"], responses=ERRORS)
#: ``/host/usb``, beside the host's summary.
host_router = APIRouter(prefix="/host", tags=["usb"], responses=ERRORS)


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of the changing endpoints.
USB_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error(
        "The caller's role may not change the VM, or asked for usb-host without being an admin."
    ),
    404: _error("No such VM, device or volume (or not the caller's)."),
    409: _error(
        "The VM is starting or stopping (named), runs without a USB controller (stop it "
        "first), or the volume is attached."
    ),
}


def _read(view: UsbView) -> UsbRead:
    return UsbRead(id=view.id, device=view.device, volume=view.volume, host=view.host)


@router.get("/{name}/usb", responses={404: _error("No such VM (or not the caller's).")})
def list_usb(ctx: CorralDep, principal: PrincipalDep, name: str) -> list[UsbRead]:
    """The VM's USB devices, in the order they were added."""
    from corral.compute.usb import list_usb

    return [_read(view) for view in list_usb(ctx, principal, name)]


@router.post("/{name}/usb", status_code=201, responses=USB_RESPONSES)
def add_usb(ctx: CorralDep, principal: PrincipalDep, name: str, body: UsbCreate) -> UsbRead:
    """Add a USB device: from the next start, and at once if the VM runs; the device."""
    from corral.compute.usb import add_usb

    return _read(add_usb(ctx, principal, name, body.device, body.volume, body.host))


@router.delete("/{name}/usb/{usb_id}", responses=USB_RESPONSES)
def remove_usb(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: str,
    usb_id: str,
    timeout: float = Query(default=10.0, description="Seconds the guest has to release it."),
) -> UsbRead:
    """Remove a USB device (a usb-storage device's volume is detached); the device."""
    from corral.compute.usb import remove_usb

    return _read(remove_usb(ctx, principal, name, usb_id, timeout))


@host_router.get("/usb", responses={403: _error("The caller is not an admin.")})
def list_host_usb(ctx: CorralDep, principal: PrincipalDep) -> list[HostUsbRead]:
    """The host's USB devices, as sysfs lists them, each marked whether host_allow of
    corral.toml's [usb] section lets admins pass it through."""
    from corral.compute.usb import list_host_usb

    return [
        HostUsbRead(
            address=d.address,
            id=d.usb_id,
            manufacturer=d.manufacturer,
            product=d.product,
            allowed=allowed,
        )
        for d, allowed in list_host_usb(ctx, principal)
    ]
