"""``/floating-ips``: addresses of the host's floating pool, allocated to a project and
associated with a VM's NIC on a managed network.

Allocating, associating and releasing change the host's addresses and nftables table in well
under a second: the answers are the floating IP (201 for an allocation), not tasks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import ERRORS, ErrorRead
from corral.api.schemas.floating import FloatingIpAssociate, FloatingIpCreate, FloatingIpRead
from corral.compute.floating import FloatingIpView

router = APIRouter(prefix="/floating-ips", tags=["floating-ips"], responses=ERRORS)

#: The floating IP of a path; what is no IPv4 address names no floating IP (404).
Address = Annotated[
    str, Path(max_length=15, description="The floating IP.", examples=["203.0.113.1"])
]


def floating_read(view: FloatingIpView) -> FloatingIpRead:
    """The wire form of a floating IP view."""
    return FloatingIpRead(**view.as_dict())


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of an endpoint that names a floating IP.
FIP_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not change it."),
    404: _error("No such floating IP (or not in the caller's projects)."),
}
#: ``responses=`` of ``POST /floating-ips``.
ALLOCATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not allocate."),
    404: _error("No such project (or not the caller's)."),
    409: _error("The host has no floating pool, or it is exhausted."),
}
#: ``responses=`` of ``POST /floating-ips/{address}/associate``.
ASSOCIATE_RESPONSES = FIP_RESPONSES | {
    404: _error("No such floating IP or VM (or not in the caller's projects)."),
    409: _error(
        "It is associated already (naming where); the VM is of another project, has no such "
        "NIC on a managed network, or that NIC has a floating IP."
    ),
}


@router.get("", responses={404: _error("No such project (or not the caller's).")})
def list_floating_ips(
    ctx: CorralDep,
    principal: PrincipalDep,
    project: Annotated[str | None, Query(max_length=63, description="Only this project's.")] = None,
) -> list[FloatingIpRead]:
    """The floating IPs of the caller's projects, by address."""
    from corral.compute.floating import list_floating_ips as listing

    return [floating_read(v) for v in listing(ctx, principal, project)]


@router.post("", status_code=201, responses=ALLOCATE_RESPONSES)
def allocate_floating_ip(
    ctx: CorralDep, principal: PrincipalDep, body: FloatingIpCreate
) -> FloatingIpRead:
    """Allocate the lowest free address of the host's floating pool to a project."""
    from corral.compute.floating import allocate

    return floating_read(allocate(ctx, principal, body.project))


@router.post("/{address}/associate", responses=ASSOCIATE_RESPONSES)
def associate_floating_ip(
    ctx: CorralDep, principal: PrincipalDep, address: Address, body: FloatingIpAssociate
) -> FloatingIpRead:
    """Associate a floating IP with a VM's NIC; the VM keeps running."""
    from corral.compute.floating import associate

    return floating_read(associate(ctx, principal, address, body.vm, body.nic))


@router.post("/{address}/disassociate", responses=FIP_RESPONSES)
def disassociate_floating_ip(
    ctx: CorralDep, principal: PrincipalDep, address: Address
) -> FloatingIpRead:
    """Disassociate a floating IP from its NIC; connections through it end."""
    from corral.compute.floating import disassociate

    return floating_read(disassociate(ctx, principal, address))


@router.delete("/{address}", status_code=204, response_class=Response, responses=FIP_RESPONSES)
def release_floating_ip(ctx: CorralDep, principal: PrincipalDep, address: Address) -> None:
    """Give a floating IP back to the pool (disassociating it first)."""
    from corral.compute.floating import release

    release(ctx, principal, address)
