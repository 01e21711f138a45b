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
    from corral.compute.reference import Catalogued, ensure_reference

    with open_corral() as ctx, phases("reference guest") as progress:
        guest, done = ensure_reference(ctx, progress, force=force, import_image=import_)
    render.out.print(
        f"reference guest {guest.key[:12]} (kernel {guest.kernel_version}) in {guest.dir}"
    )
    if done is Catalogued.IMPORTED:
        render.out.print("imported as image 'reference'")
    elif done is Catalogued.REPLACED:
        render.out.print("image 'reference' replaced by this build (it was from an older one)")
    elif done is Catalogued.STALE_IN_USE:
        render.err.print(
            "[yellow]warning:[/] image 'reference' is from an older build and VMs are cloned "
            "from it, so it stays; delete those VMs and run `corral guest build` again to use "
            "this build"
        )
