"""``corral project``: projects (tenancy), their members and quotas."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import local_actor, when
from corral.cli.context import open_corral
from corral.errors import InvalidInput

project_app = typer.Typer(
    help="Create, list and delete projects; manage their members and quotas.",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The project's name.")]
User = Annotated[str, typer.Argument(metavar="USER", help="The user's name.")]

#: What ``--instances`` and the others accept to lift a limit.
UNLIMITED = ("unlimited", "none")


@project_app.command("create")
def create_cmd(
    name: Name,
    description: Annotated[str, typer.Option(help="One line that says what it is for.")] = "",
) -> None:
    """Create a project, without members and without quotas."""
    from corral.access.projects import create_project

    with open_corral() as ctx:
        view = create_project(ctx, local_actor(ctx), name, description)
    render.out.print(f"project {view.name} created", markup=False)


@project_app.command("list")
def list_cmd(json_: Json = False) -> None:
    """List projects with their members and how many objects each owns."""
    from rich.markup import escape

    from corral.access.projects import list_projects

    with open_corral() as ctx:
        views = list_projects(ctx, local_actor(ctx))
    if json_:
        render.print_json([v.as_dict() for v in views])
        return
    render.table(
        None,
        ["Name", "VMs", "Images", "Keys", "Members", "Created", "Detail"],
        (
            [
                v.name,
                str(v.vms),
                str(v.images),
                str(v.keypairs),
                ", ".join(v.members) or "-",
                when(v.created_at),
                escape(v.description) or "-",
            ]
            for v in views
        ),
    )


@project_app.command("delete")
def delete_cmd(name: Name) -> None:
    """Delete a project that owns nothing (its memberships and quota go with it)."""
    from corral.access.projects import delete_project

    with open_corral() as ctx:
        delete_project(ctx, local_actor(ctx), name)
    render.out.print(f"project {name} deleted", markup=False)


@project_app.command("add-member")
def add_member_cmd(name: Name, user: User) -> None:
    """Make a user a member of a project."""
    from corral.access.projects import add_member

    with open_corral() as ctx:
        added = add_member(ctx, local_actor(ctx), name, user)
    state = "is now" if added else "was already"
    render.out.print(f"user {user} {state} a member of project {name}", markup=False)


@project_app.command("remove-member")
def remove_member_cmd(name: Name, user: User) -> None:
    """Take a user out of a project (the objects stay in the project)."""
    from corral.access.projects import remove_member

    with open_corral() as ctx:
        removed = remove_member(ctx, local_actor(ctx), name, user)
    state = "is no longer" if removed else "was not"
    render.out.print(f"user {user} {state} a member of project {name}", markup=False)


def _limit(field: str, text: str, size_unit: str | None) -> int | None:
    """A limit as given on the command line: a count, a size, or ``unlimited``.

    :raise InvalidInput: naming ``field``.
    """
    from corral.units import parse_size

    if text.strip().lower() in UNLIMITED:
        return None
    if size_unit is not None:
        try:
            return parse_size(text, size_unit)
        except ValueError as exc:
            raise InvalidInput(field, str(exc)) from None
    if not text.strip().isdigit():
        raise InvalidInput(field, f"{text!r} is not a whole number (or unlimited)")
    return int(text)


@project_app.command("quota")
def quota_cmd(
    name: Name,
    instances: Annotated[
        str | None, typer.Option(metavar="N", help="Most VMs (or unlimited).")
    ] = None,
    vcpus: Annotated[
        str | None, typer.Option(metavar="N", help="Most vCPUs of all VMs (or unlimited).")
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(metavar="SIZE", help="Most memory of all VMs, e.g. 8G; a bare number is MiB."),
    ] = None,
    disk: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE", help="Most provisioned disk of all VMs, e.g. 100G (or unlimited)."
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Lift every limit.")] = False,
    json_: Json = False,
) -> None:
    """Show a project's quotas and usage; with options, change the limits given."""
    from corral.access.quotas import clear_quota, get_quota, set_quota

    given = {
        key: value
        for key, value in (
            ("instances", instances),
            ("vcpus", vcpus),
            ("memory", memory),
            ("disk", disk),
        )
        if value is not None
    }
    with open_corral() as ctx:
        actor = local_actor(ctx)
        if clear:
            if given:
                raise InvalidInput("clear", "lifts every limit: give it without limits")
            view = clear_quota(ctx, actor, name)
        elif given:
            units = {"memory": "M", "disk": ""}
            limits = {key: _limit(key, text, units.get(key)) for key, text in given.items()}
            view = set_quota(ctx, actor, name, limits)
        else:
            view = get_quota(ctx, actor, name)
    if json_:
        render.print_json(view.as_dict())
        return

    def show(resource: str, value: int | None) -> str:
        if value is None:
            return "unlimited"
        return render.size(value) if resource in ("memory", "disk") else str(value)

    render.table(
        f"project {view.project}",
        ["Quota", "Limit", "Used"],
        ([key, show(key, limit), show(key, view.usage[key])] for key, limit in view.limits.items()),
    )
