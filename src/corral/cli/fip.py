"""``corral fip``: floating IPs, through corrald's API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

fip_app = typer.Typer(
    help="Allocate floating IPs from the host's pool, associate them with VMs' NICs, move "
    "and release them.",
    no_args_is_help=True,
)

Address = Annotated[str, typer.Argument(metavar="ADDRESS", help="The floating IP.")]


@fip_app.command("allocate")
def allocate_cmd(
    project: Annotated[
        str, typer.Option("--project", metavar="NAME", help="The project it goes to.")
    ] = "default",
) -> None:
    """Allocate the lowest free address of the pool; prints it."""
    with open_client() as api:
        fip = api.allocate_floating_ip(project)
    render.out.print(fip.address, markup=False)


@fip_app.command("list")
def list_cmd(
    project: Annotated[
        str | None, typer.Option("--project", metavar="NAME", help="Only this project's.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Floating IPs, by address."""
    with open_client() as api:
        items = api.list_floating_ips(project)
    if json_:
        render.print_json([f.model_dump() for f in items])
        return
    render.table(
        None,
        ["Address", "Project", "VM", "NIC", "Guest"],
        ([f.address, f.project, f.vm or "-", f.nic or "-", f.guest or "-"] for f in items),
    )


@fip_app.command("associate")
def associate_cmd(
    address: Address,
    vm: Annotated[str, typer.Argument(metavar="VM", help="The VM, by name.")],
    nic: Annotated[
        str | None,
        typer.Option(
            "--nic", metavar="NIC", help="Its NIC (default: its first on a managed network)."
        ),
    ] = None,
) -> None:
    """Associate a floating IP with a VM's NIC (moving one: disassociate it first)."""
    with open_client() as api:
        fip = api.associate_floating_ip(address, vm, nic)
    render.out.print(
        f"floating ip {fip.address} -> vm {fip.vm} {fip.nic} ({fip.guest})", markup=False
    )


@fip_app.command("disassociate")
def disassociate_cmd(address: Address) -> None:
    """Disassociate a floating IP from its NIC."""
    with open_client() as api:
        fip = api.disassociate_floating_ip(address)
    render.out.print(f"floating ip {fip.address} disassociated", markup=False)


@fip_app.command("release")
def release_cmd(address: Address) -> None:
    """Give a floating IP back to the pool."""
    with open_client() as api:
        api.release_floating_ip(address)
    render.out.print(f"floating ip {address} released", markup=False)
