"""``corral token``: API tokens, shown once and kept by corral only as a hash."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import SHOWN_ONCE, local_actor, when
from corral.cli.context import open_corral

token_app = typer.Typer(
    help="Create, list and revoke API tokens (corral keeps only their hashes).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@token_app.command("create")
def create_cmd(
    user: Annotated[str, typer.Argument(metavar="USER", help="Whose token it is.")],
    name: Annotated[
        str, typer.Option(metavar="NAME", help="What it is for (ci, laptop).")
    ] = "default",
    expires: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Lifetime, e.g. 30d, 12h, 2w (default: none)."),
    ] = None,
    json_: Json = False,
) -> None:
    """Make an API token for a user and print it, this once."""
    from corral.access.tokens import create_token, parse_duration

    lifetime = None if expires is None else parse_duration(expires)
    with open_corral() as ctx:
        new = create_token(ctx, local_actor(ctx), user, name, lifetime)
    if json_:
        render.print_json({**new.view.as_dict(), "token": new.secret})
        return
    render.out.print(f"token: {new.secret}", markup=False, soft_wrap=True)
    render.out.print(
        f"token id: {new.view.id} (user {new.view.user}, expires {when(new.view.expires_at)})",
        markup=False,
    )
    render.out.print(SHOWN_ONCE, markup=False)


@token_app.command("list")
def list_cmd(
    user: Annotated[
        str | None, typer.Option(metavar="USER", help="Only this user's tokens.")
    ] = None,
    json_: Json = False,
) -> None:
    """List tokens, newest first (never the tokens themselves: their first characters)."""
    from rich.markup import escape

    from corral.access.tokens import list_tokens

    with open_corral() as ctx:
        views = list_tokens(ctx, local_actor(ctx), user)
    if json_:
        render.print_json([v.as_dict() for v in views])
        return
    render.table(
        None,
        ["ID", "User", "Name", "Starts", "State", "Created", "Last Use", "Expires"],
        (
            [
                v.id,
                v.user,
                escape(v.name),
                f"{v.prefix}...",
                v.state,
                when(v.created_at),
                when(v.last_used_at),
                when(v.expires_at),
            ]
            for v in views
        ),
    )


@token_app.command("revoke")
def revoke_cmd(
    token_id: Annotated[
        str,
        typer.Argument(metavar="ID", help="The token's id (or its first digits, or the token)."),
    ],
) -> None:
    """Revoke a token: requests with it are refused from now on."""
    from corral.access.tokens import revoke_token

    with open_corral() as ctx:
        view = revoke_token(ctx, local_actor(ctx), token_id)
    render.out.print(f"token {view.id} of user {view.user} revoked", markup=False)
