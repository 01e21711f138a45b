"""``/networks``: virtual networks (``nat``, ``isolated``, ``bridged``) of a project.

A network's name is unique on the host: it names the network's bridge and its guests' DNS
domain. Creating and deleting one changes the host's bridges, dnsmasq and nftables in well
under a second, so ``POST`` answers 201 with the network and ``DELETE`` 204, not tasks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset
from corral.api.schemas import ERRORS, ErrorRead, Page
from corral.api.schemas.networks import NetworkCreate, NetworkKind, NetworkRead, PortRead
from corral.compute.networks import NetworkView
from corral.spec.vm import NAME_PATTERN

router = APIRouter(prefix="/networks", tags=["networks"], responses=ERRORS)

NetworkName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="The network's name.", examples=["lan"])
]


def network_read(view: NetworkView) -> NetworkRead:
    """The wire form of a network view."""
    return NetworkRead(
        name=view.name,
        project=view.project,
        kind=view.kind,
        subnet=view.subnet,
        gateway=view.gateway,
        bridge=view.bridge,
        uplink=view.uplink,
        vlan=view.vlan,
        ports=[PortRead(vm=p.vm, nic=p.nic, mac=p.mac, address=p.address) for p in view.ports],
        used=view.used,
        free=view.free,
        created_at=view.created_at,
    )


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of ``POST /networks``.
CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not create, or a bridged network by a non-admin."),
    404: _error("No such project (or not the caller's)."),
    409: _error(
        "The name is taken; the subnet overlaps another network's (named) or the host's; "
        "corrald does not run as root (user-mode networking only)."
    ),
}
#: ``responses=`` of an endpoint that names a network.
NETWORK_RESPONSES: dict[int | str, dict[str, object]] = {
    404: _error("No such network (or not in the caller's projects)."),
}
#: ``responses=`` of ``DELETE /networks/{name}``.
DELETE_RESPONSES = NETWORK_RESPONSES | {
    403: _error("The caller's role may not delete."),
    409: _error("NICs of VMs are on it (named)."),
}
#: ``responses=`` of ``GET /networks``.
LIST_RESPONSES: dict[int | str, dict[str, object]] = {
    404: _error("The project filtered on does not exist (or is not the caller's)."),
}


@router.get("", responses=LIST_RESPONSES)
def list_networks(
    ctx: CorralDep,
    principal: PrincipalDep,
    project: Annotated[str | None, Query(max_length=63, description="Only this project's.")] = None,
    name: Annotated[
        str | None, Query(max_length=63, description="Only names that contain this.")
    ] = None,
    kind: Annotated[NetworkKind | None, Query(description="Only networks of this kind.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[NetworkRead]:
    """Networks by name, with how many NICs are on each and how many addresses are free."""
    from corral.compute.networks import NetworkFilter, page_networks

    if "\x00" in (name or ""):
        # No name holds a NUL (and PostgreSQL refuses one in a query): nothing matches.
        return Page[NetworkRead](items=[], total=0, limit=limit, offset=offset)
    filters = NetworkFilter(project=project, name=name, kind=kind)
    views, total = page_networks(ctx, principal, filters, limit, offset)
    return Page[NetworkRead](
        items=[network_read(v) for v in views], total=total, limit=limit, offset=offset
    )


@router.post("", status_code=201, responses=CREATE_RESPONSES)
def create_network(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: NetworkCreate,
) -> NetworkRead:
    """Create a network in a project and make it on the host."""
    from corral.compute.networks import create_network as create

    view = create(
        ctx,
        principal,
        body.name,
        body.kind,
        subnet=body.subnet,
        gateway=body.gateway,
        bridge=body.bridge,
        uplink=body.uplink,
        vlan=body.vlan,
        project=body.project,
    )
    response.headers["Location"] = request.url_for("get_network", name=view.name).path
    return network_read(view)


@router.get("/{name}", responses=NETWORK_RESPONSES)
def get_network(ctx: CorralDep, principal: PrincipalDep, name: NetworkName) -> NetworkRead:
    """One network, with the NICs on it and their addresses."""
    from corral.compute.networks import get_network as get

    return network_read(get(ctx, principal, name))


@router.delete("/{name}", status_code=204, response_class=Response, responses=DELETE_RESPONSES)
def delete_network(ctx: CorralDep, principal: PrincipalDep, name: NetworkName) -> None:
    """Delete a network no NIC is on, and what the host had for it."""
    from corral.compute.networks import delete_network as delete

    delete(ctx, principal, name)
