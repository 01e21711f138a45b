"""``corral type``: the instance types (flavors) a launch chooses from, through corrald's API
(they are the daemon host's: shipped ones and its ``instance-types.toml``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

type_app = typer.Typer(
    help="List instance types: vCPUs, memory, root disk and price (add your own in "
    "$CORRAL_HOME/instance-types.toml).",
    no_args_is_help=True,
)


@type_app.command("list")
def list_cmd(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List instance types by family and size, shipped ones and your own."""
    from rich.markup import escape

    from corral.spec.cloud import HOURS_PER_MONTH

    with open_client() as api:
        types = api.all_types()
    monthly = {
        t.name: (Decimal(t.price_per_hour) * HOURS_PER_MONTH).quantize(Decimal("0.01"))
        for t in types
    }
    if json_:
        render.print_json(
            [{**t.model_dump(), "price_per_month": str(monthly[t.name])} for t in types]
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
                f"{monthly[t.name]} {t.currency}",
                t.source if t.source == "shipped" else escape(Path(t.source).name),
                escape(t.description) or "-",
            ]
            for t in types
        ),
    )
