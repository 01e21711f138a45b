"""``corral nic``: a VM's network cards, through corrald's API."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from corral.cli import render
from corral.cli.context import open_client

nic_app = typer.Typer(
    help="Add, list and remove a VM's network cards and set their link (live while the VM runs).",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(metavar="VM", help="The VM's name.")]
Nic = Annotated[str, typer.Argument(metavar="NIC", help="The NIC's name (corral nic list).")]


@nic_app.command("list")
def list_cmd(
    name: Name, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """The VM's NICs: network, MAC, address, host tap and link."""
    with open_client() as api:
        nics = api.list_nics(name)
    if json_:
        render.print_json([n.model_dump(mode="json") for n in nics])
        return
    render.table(
        None,
        ["NIC", "NETWORK", "MODEL", "MAC", "ADDRESS", "TAP", "LINK"],
        [
            (
                n.name,
                n.network or n.kind,
                n.model,
                n.mac,
                n.address or "-",
                n.tap or "-",
                "up" if n.link else "down",
            )
            for n in nics
        ],
    )


@nic_app.command("add")
def add_cmd(
    name: Name,
    net: Annotated[str, typer.Option("--net", metavar="NETWORK", help="The network it is on.")],
    ip: Annotated[
        str | None,
        typer.Option("--ip", metavar="ADDRESS", help="A fixed address (default: the next free)."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="virtio-net-pci or e1000.")
    ] = "virtio-net-pci",
) -> None:
    """Add a NIC on a network to the VM: from its next start, and at once if it runs."""
    with open_client() as api:
        nic = api.add_nic(name, net, ip, model)
    address = f", address {nic.address}" if nic.address else ""
    render.out.print(
        f"VM {name}: {nic.name} added on {nic.network} (MAC {nic.mac}{address})", markup=False
    )


@nic_app.command("remove")
def remove_cmd(
    name: Name,
    nic: Nic,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds the guest has to release it.")
    ] = 10.0,
) -> None:
    """Remove a NIC from the VM; its address is free again."""
    with open_client() as api:
        removed = api.remove_nic(name, nic, timeout)
    render.out.print(f"VM {name}: {removed.name} removed", markup=False)


@nic_app.command("link")
def link_cmd(
    name: Name,
    nic: Nic,
    state: Annotated[Literal["up", "down"], typer.Argument(metavar="up|down")],
) -> None:
    """Set the NIC's link up or down (at once if the VM runs, and from its next start)."""
    with open_client() as api:
        changed = api.set_nic_link(name, nic, state == "up")
    render.out.print(
        f"VM {name}: {changed.name} link {'up' if changed.link else 'down'}", markup=False
    )
