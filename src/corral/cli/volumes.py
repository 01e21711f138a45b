"""``corral volume``: volumes (disks of a project), through corrald's API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from corral.api.schemas.volumes import VolumeRead

volume_app = typer.Typer(
    help="Create, list, show, change and delete volumes (the daemon is started if none runs).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The volume's name.")]
Project = Annotated[
    str | None,
    typer.Option(
        "--project",
        metavar="NAME",
        help="The volume's project (needed only when the name is in several of yours).",
    ),
]

#: Most items one request asks for; the listing pages through the rest.
_PAGE = 1000


def _created(iso: str) -> str:
    return iso[:19].replace("T", " ")


@volume_app.command("create")
def create_cmd(
    name: Name,
    size: Annotated[str, typer.Option("--size", help="Provisioned size, e.g. 10G or 512M.")],
    format_: Annotated[
        str, typer.Option("--format", help="qcow2 (thin, snapshots) or raw (a sparse file).")
    ] = "qcow2",
    project: Annotated[
        str, typer.Option("--project", metavar="NAME", help="The project it goes into.")
    ] = "default",
    description: Annotated[str, typer.Option(help="A line that says what it holds.")] = "",
) -> None:
    """Create a blank volume in a project, within its disk quota."""
    with open_client() as api:
        v = api.create_volume(name, size, format_, project=project, description=description)
    render.out.print(
        f"volume {v.name} created in project {v.project} ({v.format}, {render.size(v.size)})",
        markup=False,
    )


@volume_app.command("list")
def list_cmd(
    project: Annotated[
        str | None, typer.Option("--project", metavar="NAME", help="Only this project's.")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="Only volumes ('volume') or VMs' disks ('vm-disk')."),
    ] = None,
    json_: Json = False,
) -> None:
    """Volumes, and VMs' disks (kind vm-disk, read-only here), by name."""
    with open_client() as api:
        items: list[VolumeRead] = []
        while True:
            page = api.list_volumes(project=project, kind=kind, limit=_PAGE, offset=len(items))
            items += page.items
            if not page.items or len(items) >= page.total:
                break
    if json_:
        render.print_json([v.model_dump() for v in items])
        return
    render.table(
        None,
        ["Name", "Project", "Kind", "Format", "Size", "Used", "Attached to", "Created"],
        (
            [
                v.name,
                v.project,
                v.kind,
                v.format,
                render.size(v.size),
                render.size(v.used),
                v.attached_to or "-",
                _created(v.created_at),
            ]
            for v in items
        ),
    )


@volume_app.command("info")
def info_cmd(name: Name, project: Project = None, json_: Json = False) -> None:
    """One volume."""
    with open_client() as api:
        v = api.get_volume(name, project)
    if json_:
        render.print_json(v.model_dump())
        return
    render.fields(
        [
            ("Name", v.name),
            ("Project", v.project),
            ("Format", v.format),
            ("Size", render.size(v.size)),
            ("Used", render.size(v.used)),
            ("Attached to", v.attached_to or "-"),
            ("Description", v.description or "-"),
            ("Created", _created(v.created_at)),
        ]
    )


@volume_app.command("update")
def update_cmd(
    name: Name,
    rename: Annotated[
        str | None, typer.Option("--rename", metavar="NEW", help="A new name, in its project.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    project: Project = None,
) -> None:
    """Rename a volume within its project, or change its description."""
    with open_client() as api:
        v = api.update_volume(name, project, new_name=rename, description=description)
    render.out.print(f"volume {v.name} updated", markup=False)


@volume_app.command("delete")
def delete_cmd(name: Name, project: Project = None) -> None:
    """Delete a detached volume and its file."""
    with open_client() as api:
        api.delete_volume(name, project)
    render.out.print(f"volume {name} deleted", markup=False)


@volume_app.command("attach")
def attach_cmd(
    name: Name,
    vm: Annotated[str, typer.Argument(metavar="VM", help="A VM of the volume's project.")],
    project: Project = None,
) -> None:
    """Attach a volume to a VM: at once if it runs (hotplug), else from its next start."""
    with open_client() as api:
        v = api.attach_volume(name, vm, project)
    render.out.print(f"volume {v.name} attached to vm {v.attached_to}", markup=False)


@volume_app.command("detach")
def detach_cmd(
    name: Name,
    project: Project = None,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds a running guest has to release the disk (1-120)."),
    ] = 10.0,
) -> None:
    """Detach a volume from its VM (a running guest releases the disk first)."""
    with open_client() as api:
        v = api.detach_volume(name, project, timeout)
    render.out.print(f"volume {v.name} detached", markup=False)


@volume_app.command("resize")
def resize_cmd(
    name: Name,
    size: Annotated[str, typer.Argument(metavar="SIZE", help="The new size, e.g. 20G.")],
    project: Project = None,
) -> None:
    """Grow a volume; a running guest it is attached to sees the new size at once."""
    with open_client() as api:
        v = api.resize_volume(name, size, project)
    render.out.print(f"volume {v.name} is now {render.size(v.size)}", markup=False)


FileFormat = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="raw, qcow2, vmdk or vdi (default: detected; an OVA only so)."
    ),
]


@volume_app.command("import")
def import_cmd(
    name: Name,
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="A disk image (raw, qcow2, vmdk, vdi) or an OVA."),
    ],
    format_: FileFormat = None,
    project: Annotated[
        str, typer.Option("--project", metavar="NAME", help="The project it goes into.")
    ] = "default",
    description: Annotated[str, typer.Option(help="A line that says what it holds.")] = "",
) -> None:
    """Import a file as a qcow2 volume; an OVA's disks as NAME, NAME-1, ...

    corrald reads the file itself when it runs on this machine; a remote one is sent it.
    """
    from corral.cli.image import follow
    from corral.cli.progress import phases

    with open_client() as api, phases(f"importing {file.name}") as update:
        if api.on_host:
            path = file.expanduser().absolute()
            task = api.import_volume(name, path, format_, project, description)
        else:
            size = file.stat().st_size if file.is_file() else 0
            task = api.upload_volume(
                name,
                file,
                format_,
                project,
                description,
                lambda sent: update("uploading", sent / size if size else 1.0),
            )
        done = follow(api, task, lambda percent, detail: update(detail, percent / 100))
    render.out.print(f"volume {name}: {done.detail}", markup=False)


@volume_app.command("export")
def export_cmd(
    name: Name,
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The file to write (replaced if it exists).")
    ],
    format_: Annotated[
        str, typer.Option("--format", "-f", help="The copy's format: qcow2, raw, vmdk or vdi.")
    ],
    project: Project = None,
) -> None:
    """Write a volume, converted to a format, to a file (it appears only when complete)."""
    from corral.cli.progress import phases

    with open_client() as api, phases(f"exporting {name}") as update:
        written = api.export_volume(
            name,
            file,
            format_,
            project,
            lambda got, total: update("receiving", got / total if total else 1.0),
        )
    render.out.print(
        f"volume {name} exported to {file} ({format_}, {render.size(written)})", markup=False
    )
