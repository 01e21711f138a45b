"""``corral token``: API tokens, shown once and kept by corral only as a hash; through the
API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import SHOWN_ONCE, every, when
from corral.cli.context import open_client

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
    from corral.access.checks import lifetime

    lifetime(expires)
    with open_client() as api:
        new = api.create_token(user, name, expires)
    if json_:
        render.print_json(new.model_dump())
        return
    render.out.print(f"token: {new.token}", markup=False, soft_wrap=True)
    render.out.print(
        f"token id: {new.id} (user {new.user}, expires {when(new.expires_at)})",
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

    with open_client() as api:
        views = list(
            every(lambda limit, offset: api.list_tokens(user=user, limit=limit, offset=offset))
        )
    if json_:
        render.print_json([v.model_dump() for v in views])
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
    from corral.access.checks import check_token_ref

    digits = check_token_ref(token_id)  # only the id goes to the daemon, never a secret
    with open_client() as api:
        view = api.revoke_token(digits)
    render.out.print(f"token {view.id} of user {view.user} revoked", markup=False)
