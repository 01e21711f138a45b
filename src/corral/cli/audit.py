"""``corral audit``: the log of who did what, through the API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import when
from corral.cli.context import open_client

audit_app = typer.Typer(
    help="Read the audit log: who did what, and how it ended.", no_args_is_help=True
)


@audit_app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(metavar="N", help="Show the N newest entries.")] = 50,
    offset: Annotated[int, typer.Option(metavar="N", help="Skip the N newest entries first.")] = 0,
    actor: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only what this user did (or local:UID).")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(metavar="ACTION", help="Only this action (user.create), or a kind (user.)."),
    ] = None,
    project: Annotated[
        str | None, typer.Option(metavar="PROJECT", help="Only this project's entries.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only entries about the object so named.")
    ] = None,
    outcome: Annotated[
        str | None,
        typer.Option(metavar="OUTCOME", help="Only this outcome: ok, or an error (Forbidden)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List audit entries, newest first."""
    import json

    from rich.markup import escape

    from corral.access.checks import check_page

    check_page(limit, offset)
    with open_client() as api:
        entries = api.list_audit(
            actor=actor,
            action=action,
            target=target,
            project=project,
            outcome=outcome,
            limit=limit,
            offset=offset,
        ).items
    if json_:
        render.print_json([e.model_dump() for e in entries])
        return
    render.table(
        None,
        ["Time", "Actor", "Action", "Target", "Project", "Outcome", "Detail"],
        (
            [
                when(e.at),
                escape(e.actor),
                e.action,
                escape(f"{e.target_kind} {e.target_name}"),
                escape(e.project or "-"),
                e.outcome if e.outcome == "ok" else f"[red]{e.outcome}[/]",
                escape(json.dumps(e.detail, sort_keys=True)) if e.detail else "-",
            ]
            for e in entries
        ),
    )
