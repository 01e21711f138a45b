"""``corral user``: users of the API, their roles and passwords."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import SHOWN_ONCE, local_actor, read_password, when
from corral.cli.context import open_corral

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
    from corral.access.tokens import check_lifetime, create_token, parse_duration
    from corral.access.users import create_user
    from corral.errors import InvalidInput

    if expires is not None and not token:
        raise InvalidInput("expires", "is the lifetime of a token: give it with --token")
    lifetime = None if expires is None else parse_duration(expires)
    check_lifetime(lifetime)  # before the user exists: all or nothing
    password = read_password() if password_stdin else None
    with open_corral() as ctx:
        actor = local_actor(ctx)
        view = create_user(ctx, actor, name, role, project or (), password)
        new = create_token(ctx, actor, name, expires_in=lifetime) if token else None
    projects = ", ".join(view.projects) or "none"
    render.out.print(
        f"user {view.name} created ({view.role}; projects: {projects}; "
        f"password: {'set' if view.has_password else 'none'})",
        markup=False,
    )
    if new is not None:
        render.out.print(f"token: {new.secret}", markup=False, soft_wrap=True)
        render.out.print(f"token id: {new.view.id}", markup=False)
        render.out.print(SHOWN_ONCE, markup=False)


@user_app.command("list")
def list_cmd(json_: Json = False) -> None:
    """List users with their roles and projects."""
    from corral.access.users import list_users

    with open_corral() as ctx:
        views = list_users(ctx, local_actor(ctx))
    if json_:
        render.print_json([v.as_dict() for v in views])
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
    from corral.access.users import delete_user

    with open_corral() as ctx:
        delete_user(ctx, local_actor(ctx), name)
    render.out.print(f"user {name} deleted (its tokens are revoked)", markup=False)


def _set_disabled(name: str, disabled: bool) -> None:
    from corral.access.users import set_disabled

    with open_corral() as ctx:
        changed = set_disabled(ctx, local_actor(ctx), name, disabled)
    state = "disabled" if disabled else "enabled"
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
    from corral.access.users import set_role

    with open_corral() as ctx:
        view = set_role(ctx, local_actor(ctx), name, role)
    render.out.print(f"user {view.name} is now {view.role}", markup=False)


@user_app.command("password")
def password_cmd(
    name: Name,
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove the password: tokens only.")
    ] = False,
) -> None:
    """Set a user's password, read from standard input (one line)."""
    from corral.access.users import set_password

    password = None if remove else read_password("stdin")
    with open_corral() as ctx:
        set_password(ctx, local_actor(ctx), name, password)
    render.out.print(f"password of user {name} {'removed' if remove else 'set'}", markup=False)
