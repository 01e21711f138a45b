"""``/vms/{name}/nics``: a VM's network cards.

Adding, removing and relinking one is quick and answers at once, not with a task: a change
of record on a VM that is not running, hotplug as well on a running one (a removal waits for
the guest at most its ``timeout``). Each is in the audit log.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import ERRORS, ErrorRead
from corral.api.schemas.nics import NicCreate, NicRead, NicUpdate
from corral.compute.nics import NicView
from corral.spec.vm import DEVICE_NAME_PATTERN

router = APIRouter(prefix="/vms", tags=["nics"], responses=ERRORS)

NicName = Annotated[
    str, Path(pattern=DEVICE_NAME_PATTERN, description="The NIC's name.", examples=["net1"])
]


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of the changing endpoints.
NIC_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not change the VM."),
    404: _error("No such VM, NIC or network (or not the caller's)."),
    409: _error(
        "The VM is starting or stopping (named), or runs on a machine without hotplug (stop "
        "it first); the address is taken or none is free; the VM has the most NICs."
    ),
    504: _error("The guest did not release the card in time: it stays attached and working."),
}


def _read(view: NicView) -> NicRead:
    return NicRead(
        name=view.name,
        kind="network" if view.kind == "network" else "user",
        model=view.model,
        network=view.network,
        mac=view.mac,
        address=view.address,
        tap=view.tap,
        link=view.link,
    )


@router.get("/{name}/nics", responses={404: _error("No such VM (or not the caller's).")})
def list_nics(ctx: CorralDep, principal: PrincipalDep, name: str) -> list[NicRead]:
    """The VM's NICs, in the order the guest sees them."""
    from corral.compute.nics import list_nics

    return [_read(view) for view in list_nics(ctx, principal, name)]


@router.post("/{name}/nics", status_code=201, responses=NIC_RESPONSES)
def add_nic(ctx: CorralDep, principal: PrincipalDep, name: str, body: NicCreate) -> NicRead:
    """Add a NIC on a network: from the next start, and at once if the VM runs; the NIC
    with its MAC and address."""
    from corral.compute.nics import add_nic

    return _read(add_nic(ctx, principal, name, body.network, body.ip, body.model))


@router.delete("/{name}/nics/{nic}", responses=NIC_RESPONSES)
def remove_nic(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: str,
    nic: NicName,
    timeout: float = Query(default=10.0, description="Seconds the guest has to release it."),
) -> NicRead:
    """Remove a NIC: from the guest if it runs, then its port, tap and address; the NIC."""
    from corral.compute.nics import remove_nic

    return _read(remove_nic(ctx, principal, name, nic, timeout))


@router.patch("/{name}/nics/{nic}", responses=NIC_RESPONSES)
def update_nic(
    ctx: CorralDep, principal: PrincipalDep, name: str, nic: NicName, body: NicUpdate
) -> NicRead:
    """Set the NIC's link up or down: at once if the VM runs, and from its next start."""
    from corral.compute.nics import set_link

    return _read(set_link(ctx, principal, name, nic, body.link))
