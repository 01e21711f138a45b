"""``corral image``: the catalogue of base images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral.cli import render
from corral.cli.context import open_corral

image_app = typer.Typer(
    help="Import, list, inspect, convert and delete base images.", no_args_is_help=True
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
    """Import a file as a read-only qcow2 base image."""
    from corral.cli.progress import bar
    from corral.compute.images import import_image

    with open_corral() as ctx, bar(f"importing {file.name}") as progress:
        view = import_image(
            ctx,
            name,
            file,
            fmt,
            os_hint,
            kernel,
            initrd,
            cmdline,
            ready_marker,
            progress,
            ssh_user=ssh_user,
            project=project,
        )
    render.out.print(
        f"image {view.name} imported from {view.source_format}: "
        f"{render.size(view.virtual_size)} virtual, {render.size(view.actual_size)} on disk"
    )


@image_app.command("list")
def list_cmd(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List base images with their size and how many VMs use each."""
    from corral.compute.images import list_images

    with open_corral() as ctx:
        views = list_images(ctx)
    if json_:
        render.print_json([v.as_dict() for v in views])
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
                "kernel" if v.kernel else "firmware",
                str(len(v.used_by)),
            ]
            for v in views
        ),
    )


@image_app.command("info")
def info_cmd(
    name: str, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Show one base image."""
    from corral.compute.images import get_image

    with open_corral() as ctx:
        v = get_image(ctx, name)
    if json_:
        render.print_json(v.as_dict())
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


@image_app.command("delete")
def delete_cmd(name: str) -> None:
    """Delete a base image that no VM uses."""
    from corral.compute.images import delete_image

    with open_corral() as ctx:
        delete_image(ctx, name)
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
