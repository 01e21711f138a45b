"""``corral type``: the instance types (flavors) a launch chooses from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral.cli import render

type_app = typer.Typer(
    help="List instance types: vCPUs, memory, root disk and price (add your own in "
    "$CORRAL_HOME/instance-types.toml).",
    no_args_is_help=True,
)


@type_app.command("list")
def list_cmd(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List instance types by family and size, shipped ones and your own."""
    from rich.markup import escape

    from corral.compute.types import list_types
    from corral.config import load_home

    types = list_types(load_home())
    if json_:
        render.print_json(
            [
                {**t.model_dump(mode="json"), "price_per_month": str(t.price_per_month)}
                for t in types
            ]
        )
        return
    render.table(
        None,
        ["Name", "vCPUs", "Memory", "Disk Size", "Price/Hour", "~Price/Month", "Source", "Detail"],
        (
            [
                t.name,
                str(t.vcpus),
                render.size(t.memory),
                render.size(t.disk),
                f"{t.price_per_hour} {t.currency}",
                f"{t.price_per_month} {t.currency}",
                t.source if t.source == "shipped" else escape(Path(t.source).name),
                escape(t.description) or "-",
            ]
            for t in types
        ),
    )
