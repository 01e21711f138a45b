"""``corral usb``: a VM's USB devices, through corrald's API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

usb_app = typer.Typer(
    help="Add, list and remove a VM's USB devices (live while the VM runs).",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")]


@usb_app.command("add")
def add_cmd(
    name: Name,
    device: Annotated[
        str, typer.Argument(metavar="DEVICE", help="usb-tablet, usb-kbd or usb-storage.")
    ],
    volume: Annotated[
        str | None,
        typer.Option("--volume", metavar="VOL", help="usb-storage: a volume of the VM's project."),
    ] = None,
) -> None:
    """Add a USB device to the VM: from its next start, and at once if it runs (a VM that
    started without USB devices has no controller: stop it first)."""
    with open_client() as api:
        usb = api.add_usb(name, device, volume)
    on = f" (volume {usb.volume})" if usb.volume else ""
    render.out.print(f"VM {name}: {usb.device} added as {usb.id}{on}", markup=False)


@usb_app.command("remove")
def remove_cmd(
    name: Name,
    usb_id: Annotated[str, typer.Argument(metavar="ID", help="The device's id (corral usb list).")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds the guest has to release it.")
    ] = 10.0,
) -> None:
    """Remove a USB device from the VM (a usb-storage device's volume is detached)."""
    with open_client() as api:
        usb = api.remove_usb(name, usb_id, timeout)
    render.out.print(f"VM {name}: {usb.device} {usb.id} removed", markup=False)


@usb_app.command("list")
def list_cmd(
    name: Name, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """The VM's USB devices."""
    with open_client() as api:
        devices = api.list_usb(name)
    if json_:
        render.print_json([d.model_dump(mode="json") for d in devices])
        return
    render.table(
        None, ["ID", "DEVICE", "VOLUME"], [(d.id, d.device, d.volume or "-") for d in devices]
    )
