"""``corral project``: projects (tenancy), their members and quotas, through the API."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render
from corral.cli.access import every, when
from corral.cli.context import open_client
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
    with open_client() as api:
        view = api.create_project(name, description)
    render.out.print(f"project {view.name} created", markup=False)


@project_app.command("list")
def list_cmd(json_: Json = False) -> None:
    """List projects with their members and how many objects each owns."""
    from rich.markup import escape

    with open_client() as api:
        views = list(every(lambda limit, offset: api.list_projects(limit=limit, offset=offset)))
    if json_:
        render.print_json([v.model_dump() for v in views])
        return
    render.table(
        None,
        ["Name", "VMs", "Images", "Keys", "Volumes", "Members", "Created", "Detail"],
        (
            [
                v.name,
                str(v.vms),
                str(v.images),
                str(v.keypairs),
                str(v.volumes),
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
    with open_client() as api:
        api.delete_project(name)
    render.out.print(f"project {name} deleted", markup=False)


@project_app.command("add-member")
def add_member_cmd(name: Name, user: User) -> None:
    """Make a user a member of a project."""
    with open_client() as api:
        added = api.add_member(name, user).changed
    state = "is now" if added else "was already"
    render.out.print(f"user {user} {state} a member of project {name}", markup=False)


@project_app.command("remove-member")
def remove_member_cmd(name: Name, user: User) -> None:
    """Take a user out of a project (the objects stay in the project)."""
    with open_client() as api:
        removed = api.remove_member(name, user).changed
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
    if clear and given:
        raise InvalidInput("clear", "lifts every limit: give it without limits")
    units = {"memory": "M", "disk": ""}
    limits = {key: _limit(key, text, units.get(key)) for key, text in given.items()}
    with open_client() as api:
        if clear:
            view = api.replace_quota(name, {})
        elif limits:
            view = api.set_quota(name, limits)
        else:
            view = api.get_quota(name)
    if json_:
        render.print_json(view.model_dump())
        return

    def show(resource: str, value: int | None) -> str:
        if value is None:
            return "unlimited"
        return render.size(value) if resource in ("memory", "disk") else str(value)

    usage = view.usage.model_dump()
    render.table(
        f"project {view.project}",
        ["Quota", "Limit", "Used"],
        (
            [key, show(key, limit), show(key, usage[key])]
            for key, limit in view.limits.model_dump().items()
        ),
    )
