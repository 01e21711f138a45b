"""``corral clone``: a new VM from a VM's disks, through corrald's API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client


def clone_cmd(
    source: Annotated[str, typer.Argument(metavar="SRC", help="The VM to clone.")],
    name: Annotated[str, typer.Argument(metavar="DST", help="The new VM's name.")],
    linked: Annotated[
        bool,
        typer.Option(
            "--linked/--full",
            help="Linked: overlays on the source's frozen layers (instant; the source and "
            "that snapshot stay while the clone exists). Full: a standalone copy.",
        ),
    ] = True,
    snapshot: Annotated[
        str | None,
        typer.Option(
            metavar="SNAP",
            help="Clone this snapshot (in any state of the source); without it the "
            "source's disks now (stopped; a linked clone takes snapshot clone-DST of it).",
        ),
    ] = None,
    project: Annotated[
        str | None, typer.Option(help="The clone's project; the source's by default.")
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="Start the clone once made.")] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Print the task's id instead of waiting for it.")
    ] = False,
) -> None:
    """Clone a VM: new name, UUID, MACs, instance id and SSH port; same disks."""
    from corral.cli.main import _finish

    mode = "linked" if linked else "full"
    with open_client() as api:
        done = _finish(api, api.clone_vm(source, name, mode, snapshot, project, start), detach)
    if done is not None:
        render.out.print(f"VM {source}: {done.detail}", markup=False)
