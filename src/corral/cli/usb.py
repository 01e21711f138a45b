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
        str,
        typer.Argument(metavar="DEVICE", help="usb-tablet, usb-kbd, usb-storage or usb-host."),
    ],
    volume: Annotated[
        str | None,
        typer.Option("--volume", metavar="VOL", help="usb-storage: a volume of the VM's project."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="VENDOR:PRODUCT",
            help="usb-host: the host device (corral usb host-list); admins only.",
        ),
    ] = None,
) -> None:
    """Add a USB device to the VM: from its next start, and at once if it runs (a VM that
    started without USB devices has no controller: stop it first). A host device passes
    through only for an admin, and only if corral.toml's [usb] host_allow lists it."""
    with open_client() as api:
        usb = api.add_usb(name, device, volume, host)
    on = f" (volume {usb.volume})" if usb.volume else ""
    on += f" (host device {usb.host})" if usb.host else ""
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
        None,
        ["ID", "DEVICE", "VOLUME", "HOST"],
        [(d.id, d.device, d.volume or "-", d.host or "-") for d in devices],
    )


@usb_app.command("host-list")
def host_list_cmd(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The host's USB devices, and which corral.toml's [usb] host_allow lets admins pass
    through (admins only)."""
    with open_client() as api:
        devices = api.list_host_usb()
    if json_:
        render.print_json([d.model_dump(mode="json") for d in devices])
        return
    render.table(
        None,
        ["ADDRESS", "ID", "MANUFACTURER", "PRODUCT", "ALLOWED"],
        [
            (d.address, d.id, d.manufacturer or "-", d.product or "-", "yes" if d.allowed else "no")
            for d in devices
        ],
    )
