"""``corral net``: virtual networks, through corrald's API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from corral.api.schemas.networks import NetworkRead

net_app = typer.Typer(
    help="Create, list, show and delete virtual networks (the daemon is started if none "
    "runs; a root corral only).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The network's name.")]

#: Most items one request asks for; the listing pages through the rest.
_PAGE = 1000


def _created(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _free(n: NetworkRead) -> str:
    return "-" if n.free is None else str(n.free)


@net_app.command("create")
def create_cmd(
    name: Name,
    kind: Annotated[
        str,
        typer.Option(
            "--type",
            metavar="KIND",
            help="nat (a virtual router out of the uplink), isolated (no way out), or "
            "bridged (join a host bridge; admins only).",
        ),
    ] = "nat",
    subnet: Annotated[
        str | None,
        typer.Option(metavar="CIDR", help="A private subnet, /16 to /29, e.g. 10.77.0.0/24."),
    ] = None,
    gateway: Annotated[
        str | None, typer.Option(metavar="IP", help="The bridge's address (default: first).")
    ] = None,
    bridge: Annotated[
        str | None, typer.Option(metavar="BR", help="The host bridge a bridged network joins.")
    ] = None,
    uplink: Annotated[
        str | None,
        typer.Option(metavar="IF", help="The interface a nat network goes out of."),
    ] = None,
    vlan: Annotated[int | None, typer.Option(metavar="N", help="A VLAN tag, 1-4094.")] = None,
    project: Annotated[
        str, typer.Option("--project", metavar="NAME", help="The project it goes into.")
    ] = "default",
) -> None:
    """Create a virtual network."""
    with open_client() as api:
        n = api.create_network(
            name,
            kind,
            subnet=subnet,
            gateway=gateway,
            bridge=bridge,
            uplink=uplink,
            vlan=vlan,
            project=project,
        )
    where = f"{n.subnet}, gateway {n.gateway}" if n.subnet else f"bridge {n.bridge}"
    render.out.print(
        f"network {n.name} created in project {n.project} ({n.kind}, {where})", markup=False
    )


@net_app.command("list")
def list_cmd(
    project: Annotated[
        str | None, typer.Option("--project", metavar="NAME", help="Only this project's.")
    ] = None,
    json_: Json = False,
) -> None:
    """Networks, by name."""
    with open_client() as api:
        items: list[NetworkRead] = []
        while True:
            page = api.list_networks(project=project, limit=_PAGE, offset=len(items))
            items += page.items
            if not page.items or len(items) >= page.total:
                break
    if json_:
        render.print_json([n.model_dump() for n in items])
        return
    render.table(
        None,
        ["Name", "Project", "Type", "Subnet", "Bridge", "NICs", "Free", "Created"],
        (
            [
                n.name,
                n.project,
                n.kind,
                n.subnet or "-",
                n.bridge,
                str(n.used),
                _free(n),
                _created(n.created_at),
            ]
            for n in items
        ),
    )


@net_app.command("info")
def info_cmd(name: Name, json_: Json = False) -> None:
    """One network, with the NICs on it."""
    with open_client() as api:
        n = api.get_network(name)
    if json_:
        render.print_json(n.model_dump())
        return
    render.fields(
        [
            ("Name", n.name),
            ("Project", n.project),
            ("Type", n.kind),
            ("Subnet", n.subnet or "-"),
            ("Gateway", n.gateway or "-"),
            ("Bridge", n.bridge),
            ("Uplink", n.uplink or "-"),
            ("VLAN", "-" if n.vlan is None else str(n.vlan)),
            ("NICs", str(n.used)),
            ("Free addresses", _free(n)),
            ("Created", _created(n.created_at)),
        ]
    )
    if n.ports:
        render.table(
            None,
            ["VM", "NIC", "MAC", "Address"],
            ([p.vm, p.nic, p.mac, p.address or "-"] for p in n.ports),
        )


@net_app.command("delete")
def delete_cmd(name: Name) -> None:
    """Delete a network no NIC is on."""
    with open_client() as api:
        api.delete_network(name)
    render.out.print(f"network {name} deleted", markup=False)
