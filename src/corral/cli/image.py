"""``corral image``: the catalogue of base images, through corrald's API.

``corral image convert`` stays a tool of this machine: it converts any local file to any
local file, as ``qemu-img convert`` would (verified first), and involves no catalogue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.cli import render
from corral.cli.context import open_client
from corral.errors import InvalidInput

if TYPE_CHECKING:
    from corral.api.schemas import ImageRead, TaskRead
    from corral.client.api import Client

#: The project that owns what is made without one.
DEFAULT_PROJECT = "default"
#: Seconds between two looks at a running task.
POLL_SECONDS = 0.2
#: What ``--json`` prints of an image, in this order.
JSON_FIELDS = (
    "name",
    "project",
    "format",
    "source_format",
    "virtual_size",
    "actual_size",
    "sha256",
    "os_hint",
    "kernel",
    "initrd",
    "cmdline",
    "ready_marker",
    "ssh_user",
    "path",
    "created_at",
    "used_by",
)

image_app = typer.Typer(
    help="Import, list, inspect, update, convert and delete base images.", no_args_is_help=True
)

Fmt = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="Source format: raw, qcow2, vmdk or vdi (default: detected)."
    ),
]


@image_app.command("import")
def import_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name in the catalogue.")],
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Image file (raw, qcow2, vmdk, vdi).")
    ],
    fmt: Fmt = None,
    os_hint: Annotated[str, typer.Option("--os", help="OS hint shown in listings.")] = "",
    kernel: Annotated[Path | None, typer.Option(help="Kernel for direct boot.")] = None,
    initrd: Annotated[Path | None, typer.Option(help="Initrd for direct boot.")] = None,
    cmdline: Annotated[str, typer.Option(help="Kernel command line for direct boot.")] = "",
    ready_marker: Annotated[
        str | None, typer.Option(help="Serial console line that says the guest is ready.")
    ] = None,
    ssh_user: Annotated[
        str,
        typer.Option(
            help="User that cloud-init gives the key to (default: from --os, e.g. debian)."
        ),
    ] = "",
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            metavar="NAME",
            help="The project that owns it (default: default, whose images every project uses).",
        ),
    ] = None,
) -> None:
    """Import a file as a read-only qcow2 base image.

    corrald reads the file itself when it runs on this machine; a remote one is sent it.
    """
    from corral.api.schemas.catalogue import ImageCreate, ImageUploadCreate
    from corral.cli.progress import phases

    options: dict[str, Any] = {
        "format": fmt,
        "os_hint": os_hint,
        "ssh_user": ssh_user,
        "ready_marker": ready_marker,
        "project": project or DEFAULT_PROJECT,
    }
    with open_client() as api, phases(f"importing {file.name}") as update:
        if api.on_host:
            body = ImageCreate.model_construct(
                **{
                    **options,
                    "name": name,
                    "path": _absolute(file),
                    "kernel": None if kernel is None else _absolute(kernel),
                    "initrd": None if initrd is None else _absolute(initrd),
                    "cmdline": cmdline,
                }
            )
            task = api.import_image(body)
        else:
            for field, given in (("kernel", kernel), ("initrd", initrd), ("cmdline", cmdline)):
                if given:
                    raise InvalidInput(
                        field,
                        f"corrald at {api.address} is not on this machine: direct boot files "
                        "are imported on its host only",
                    )
            size = file.stat().st_size if file.is_file() else 0
            task = api.upload_image(
                name,
                file,
                ImageUploadCreate.model_construct(**options),
                lambda sent: update("uploading", sent / size if size else 1.0),
            )
        follow(api, task, lambda percent, detail: update(detail, percent / 100))
        view = api.get_image(name)
    render.out.print(
        f"image {view.name} imported from {view.source_format}: "
        f"{render.size(view.virtual_size)} virtual, {render.size(view.actual_size)} on disk"
    )


def _absolute(path: Path) -> str:
    return str(path.expanduser().absolute())


def follow(api: Client, task: TaskRead, update: Callable[[int, str], None]) -> TaskRead:
    """Poll ``task`` until it ends, telling ``update`` its progress; the ended task.

    :raise ApiError: it ended as error or cancelled (with its error).
    """
    from corral.client.transport import ApiError

    while True:
        update(task.progress, task.detail)
        if task.status in ("success", "error", "cancelled"):
            break
        time.sleep(POLL_SECONDS)  # a long conversion: a look now and then is enough
        task = api.get_task(task.id)
    if task.status != "success":
        raise ApiError(500, "TaskError", task.error or f"task {task.id} was {task.status}")
    return task


@image_app.command("list")
def list_cmd(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List base images with their size and how many VMs use each."""
    with open_client() as api:
        views = api.all_images()
    if json_:
        render.print_json([as_dict(v) for v in views])
        return
    render.table(
        None,
        ["Name", "Format", "From", "Virtual Size", "Disk Size", "OS", "Login", "Boot", "Instances"],
        (
            [
                v.name,
                v.format,
                v.source_format,
                render.size(v.virtual_size),
                render.size(v.actual_size),
                v.os_hint or "-",
                v.ssh_user,
                v.boot,
                str(len(v.used_by)),
            ]
            for v in views
        ),
    )


def as_dict(image: ImageRead) -> dict[str, Any]:
    """An image as ``--json`` prints it (the fields and order ``corral image`` always had)."""
    return {field: getattr(image, field) for field in JSON_FIELDS}


@image_app.command("info")
def info_cmd(
    name: str, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Show one base image."""
    with open_client() as api:
        v = api.get_image(name)
    if json_:
        render.print_json(as_dict(v))
        return
    render.fields(
        [
            ("Name", v.name),
            ("Project", v.project),
            ("Format", f"{v.format} (imported from {v.source_format})"),
            ("Virtual size", render.size(v.virtual_size)),
            ("Disk size", render.size(v.actual_size)),
            ("SHA-256", v.sha256),
            ("OS", v.os_hint or "-"),
            ("Kernel", v.kernel or "-"),
            ("Initrd", v.initrd or "-"),
            ("Cmdline", v.cmdline or "-"),
            ("Ready marker", v.ready_marker or "-"),
            ("Login user", v.ssh_user),
            ("File", v.path),
            ("Used by", ", ".join(v.used_by) or "-"),
        ]
    )


@image_app.command("update")
def update_cmd(
    name: str,
    os_hint: Annotated[str | None, typer.Option("--os", help="OS hint shown in listings.")] = None,
    ssh_user: Annotated[
        str | None,
        typer.Option(help="User that cloud-init gives the key to ('' for the one --os implies)."),
    ] = None,
    ready_marker: Annotated[
        str | None,
        typer.Option(help="Serial console line that says the guest is ready ('' for none)."),
    ] = None,
) -> None:
    """Change what an image says about its guest (its file stays as it is)."""
    from corral.api.schemas.catalogue import ImageUpdate

    changes = {"os_hint": os_hint, "ssh_user": ssh_user, "ready_marker": ready_marker}
    given: dict[str, Any] = {field: value for field, value in changes.items() if value is not None}
    if not given:
        raise InvalidInput("options", "give at least one of --os, --ssh-user, --ready-marker")
    with open_client() as api:
        v = api.update_image(name, ImageUpdate.model_construct(**given))
    render.out.print(
        f"image {v.name} updated: OS {v.os_hint or '-'}, login {v.ssh_user}, "
        f"ready marker {v.ready_marker or '-'}",
        markup=False,
    )


@image_app.command("delete")
def delete_cmd(name: str) -> None:
    """Delete a base image that no VM uses."""
    with open_client() as api:
        api.delete_image(name)
    render.out.print(f"image {name} deleted")


@image_app.command("convert")
def convert_cmd(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="Image file to read.")],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="File to write (must not exist).")],
    to: Annotated[
        str, typer.Option("--to", "-O", help="Output format: qcow2, raw, vmdk or vdi.")
    ] = "qcow2",
    fmt: Fmt = None,
) -> None:
    """Convert an image file to another format (the source is verified first)."""
    from corral.cli.progress import bar
    from corral.storage.images import convert_file

    with bar(f"converting {source.name} to {to}") as progress:
        result = convert_file(source, dest, to, fmt, progress)
    render.out.print(f"wrote {dest} ({to}, {render.size(result.virtual_size)} virtual)")
