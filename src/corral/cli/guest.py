"""``corral guest``: the reference guest used by demos and tests."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_corral

guest_app = typer.Typer(help="Build the reference guest.", no_args_is_help=True)


@guest_app.command("build")
def build_cmd(
    force: Annotated[bool, typer.Option(help="Rebuild even if a cached build exists.")] = False,
    import_: Annotated[
        bool,
        typer.Option("--import/--no-import", help="Import it into the catalogue as 'reference'."),
    ] = True,
) -> None:
    """Build the reference guest from Debian packages (cached by content hash)."""
    from corral.cli.progress import phases
    from corral.compute.reference import ensure_reference

    with open_corral() as ctx, phases("reference guest") as progress:
        guest, imported = ensure_reference(ctx, progress, force=force, import_image=import_)
    render.out.print(
        f"reference guest {guest.key[:12]} (kernel {guest.kernel_version}) in {guest.dir}"
    )
    if imported:
        render.out.print("imported as image 'reference'")
