"""``corral user``: users of the API, their roles and passwords, through the API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import SHOWN_ONCE, every, read_password, when
from corral.cli.context import open_client

user_app = typer.Typer(
    help="Create, list, disable and delete users (roles: admin, operator, viewer).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The user's name.")]


@user_app.command("create")
def create_cmd(
    name: Name,
    role: Annotated[
        str,
        typer.Option(
            metavar="ROLE",
            help="admin (everything), operator (runs its projects' VMs) or viewer (reads them).",
        ),
    ],
    project: Annotated[
        list[str] | None,
        typer.Option(metavar="PROJECT", help="A project it is a member of (repeatable)."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read its password from standard input."),
    ] = False,
    token: Annotated[
        bool, typer.Option("--token", help="Also make an API token and print it, once.")
    ] = False,
    expires: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="With --token: its lifetime, e.g. 30d, 12h."),
    ] = None,
) -> None:
    """Create a user; with --token, print an API token for it (shown this once)."""
    from corral.access.checks import lifetime
    from corral.errors import InvalidInput

    if expires is not None and not token:
        raise InvalidInput("expires", "is the lifetime of a token: give it with --token")
    lifetime(expires)  # before the user exists: all or nothing
    password = read_password() if password_stdin else None
    with open_client() as api:
        view = api.create_user(name, role, project or (), password)
        new = api.create_token(name, expires=expires) if token else None
    projects = ", ".join(view.projects) or "none"
    render.out.print(
        f"user {view.name} created ({view.role}; projects: {projects}; "
        f"password: {'set' if view.has_password else 'none'})",
        markup=False,
    )
    if new is not None:
        render.out.print(f"token: {new.token}", markup=False, soft_wrap=True)
        render.out.print(f"token id: {new.id}", markup=False)
        render.out.print(SHOWN_ONCE, markup=False)


@user_app.command("list")
def list_cmd(json_: Json = False) -> None:
    """List users with their roles and projects."""
    with open_client() as api:
        views = list(every(lambda limit, offset: api.list_users(limit=limit, offset=offset)))
    if json_:
        render.print_json([v.model_dump() for v in views])
        return
    render.table(
        None,
        ["Name", "Role", "State", "Password", "Projects", "Created"],
        (
            [
                v.name,
                v.role,
                "disabled" if v.disabled else "enabled",
                "set" if v.has_password else "-",
                ", ".join(v.projects) or "-",
                when(v.created_at),
            ]
            for v in views
        ),
    )


@user_app.command("delete")
def delete_cmd(name: Name) -> None:
    """Delete a user with its tokens; what it created stays in its projects."""
    with open_client() as api:
        api.delete_user(name)
    render.out.print(f"user {name} deleted (its tokens are revoked)", markup=False)


def _set_disabled(name: str, disabled: bool) -> None:
    with open_client() as api:
        before = api.get_user(name).disabled
        api.update_user(name, disabled=disabled)
    state = "disabled" if disabled else "enabled"
    changed = before != disabled
    render.out.print(f"user {name} {'is now' if changed else 'was already'} {state}", markup=False)


@user_app.command("disable")
def disable_cmd(name: Name) -> None:
    """Refuse a user's tokens and password until it is enabled again."""
    _set_disabled(name, True)


@user_app.command("enable")
def enable_cmd(name: Name) -> None:
    """Accept a disabled user's tokens and password again."""
    _set_disabled(name, False)


@user_app.command("set-role")
def set_role_cmd(
    name: Name,
    role: Annotated[str, typer.Argument(metavar="ROLE", help="admin, operator or viewer.")],
) -> None:
    """Give a user another role (from its next request on)."""
    with open_client() as api:
        view = api.update_user(name, role=role)
    render.out.print(f"user {view.name} is now {view.role}", markup=False)


@user_app.command("password")
def password_cmd(
    name: Name,
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove the password: tokens only.")
    ] = False,
) -> None:
    """Set a user's password, read from standard input (one line)."""
    password = None if remove else read_password("stdin")
    with open_client() as api:
        api.update_user(name, password=password)
    render.out.print(f"password of user {name} {'removed' if remove else 'set'}", markup=False)
