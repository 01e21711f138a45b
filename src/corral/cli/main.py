"""``corral``: the entry point, VM verbs, and the one place errors become exit statuses."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from corral.cli import render
from corral.cli.audit import audit_app
from corral.cli.context import open_corral
from corral.cli.guest import guest_app
from corral.cli.host import host_app
from corral.cli.image import image_app
from corral.cli.keys import key_app
from corral.cli.launch import launch_cmd, scp_cmd, ssh_cmd
from corral.cli.projects import project_app
from corral.cli.serve import serve_cmd
from corral.cli.tasks import events_cmd, task_app
from corral.cli.tokens import token_app
from corral.cli.types import type_app
from corral.cli.users import user_app
from corral.errors import CorralError, GuestTimeout, LaunchError

app = typer.Typer(
    name="corral",
    help="Manage QEMU/KVM virtual machines: copy-on-write provisioning, life cycle, consoles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(image_app, name="image")
app.add_typer(host_app, name="host")
app.add_typer(guest_app, name="guest")
app.add_typer(key_app, name="key")
app.add_typer(type_app, name="type")
app.add_typer(project_app, name="project")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.command("launch")(launch_cmd)
app.command("ssh")(ssh_cmd)
app.command("scp")(scp_cmd)
app.command("serve")(serve_cmd)
app.add_typer(task_app, name="task")
app.command("events")(events_cmd)

Name = Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Return once the guest is ready.")]
Project = Annotated[
    str | None,
    typer.Option("--project", metavar="NAME", help="The project (default: default)."),
]


@app.command("list")
def list_cmd(
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include VMs that are not running.")
    ] = False,
    json_: Json = False,
    project: Annotated[
        str | None,
        typer.Option("--project", metavar="NAME", help="Only the VMs of this project."),
    ] = None,
) -> None:
    """List VMs (running ones; --all for every VM) of every project, or of --project."""
    from corral.compute.inventory import list_vms

    with open_corral() as ctx:
        views = list_vms(ctx, include_inactive=all_, project=project)
    if json_:
        render.print_json([v.as_dict() for v in views])
        return
    render.table(
        None,
        [
            "Name",
            "Project",
            "State",
            "vCPUs",
            "Memory",
            "Provisioned",
            "Used",
            "Host CPU",
            "Host Mem",
        ],
        (
            [
                v.name,
                v.project,
                render.state_text(v.state),
                str(v.vcpus),
                render.size(v.memory),
                render.size(v.provisioned),
                render.size(v.used),
                "-" if v.host_cpu is None else f"{v.host_cpu:.1f}%",
                render.size(v.host_memory),
            ]
            for v in views
        ),
    )


@app.command()
def create(
    name: Name,
    image: Annotated[
        str | None, typer.Option(help="Base image for the root disk (a linked clone).")
    ] = None,
    vcpus: Annotated[int, typer.Option(help="Virtual CPUs.")] = 1,
    memory: Annotated[str, typer.Option(help="Memory, e.g. 256M or 2G.")] = "512M",
    disk_size: Annotated[
        str | None, typer.Option(help="Root disk size (grows the image's).")
    ] = None,
    data_disk: Annotated[
        list[str] | None, typer.Option(help="Add a blank disk of this size (repeatable).")
    ] = None,
    machine: Annotated[str, typer.Option(help="QEMU machine type.")] = "pc",
    cpu: Annotated[str | None, typer.Option(help="CPU model (default: host under KVM).")] = None,
    forward: Annotated[
        list[str] | None,
        typer.Option(help="Forward a host port: [tcp|udp:][ADDR:]HOSTPORT:GUESTPORT (repeatable)."),
    ] = None,
    vnc: Annotated[bool, typer.Option(help="Add a VNC display on a UNIX socket.")] = False,
    firmware: Annotated[
        str, typer.Option(help="bios or uefi, for images that boot from disk.")
    ] = "bios",
    start: Annotated[bool, typer.Option("--start", help="Start it right away.")] = False,
    wait: Wait = False,
    project: Project = None,
) -> None:
    """Define a VM from an image (its root disk is a copy-on-write clone) in a project,
    within its quota."""
    from corral.compute import lifecycle
    from corral.compute.define import CreateRequest
    from corral.compute.define import create as do_create

    req = CreateRequest(
        name=name,
        image=image,
        vcpus=vcpus,
        memory=memory,
        disk_size=disk_size,
        data_disks=tuple(data_disk or ()),
        machine=machine,
        cpu=cpu,
        forwards=tuple(forward or ()),
        vnc=vnc,
        firmware=firmware,
        project=project,
    )
    with open_corral() as ctx:
        spec = do_create(ctx, req)
        render.out.print(f"VM {spec.name} defined ({spec.vcpus} vCPU, {render.size(spec.memory)})")
        if start:
            outcome = lifecycle.start(ctx, name, wait=wait)
            render.out.print(f"VM {name} started{_took(outcome.seconds)}")


def _took(seconds: float | None) -> str:
    return "" if seconds is None else f", ready in {seconds:.1f} s"


@app.command()
def start(
    name: Name,
    wait: Wait = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the guest to be ready.")
    ] = 120.0,
) -> None:
    """Start a VM."""
    from corral.compute import lifecycle

    with open_corral() as ctx:
        outcome = lifecycle.start(ctx, name, wait=wait, timeout=timeout)
    render.out.print(f"VM {name} started{_took(outcome.seconds)}")


@app.command()
def stop(
    name: Name,
    timeout: Annotated[float, typer.Option(help="Seconds the guest gets to power off.")] = 60.0,
    force: Annotated[
        bool, typer.Option("--force/--no-force", help="Force off after the timeout.")
    ] = True,
) -> None:
    """Shut a VM down (ACPI power button; forced off after the timeout)."""
    from corral.compute import lifecycle

    with open_corral() as ctx:
        outcome = lifecycle.stop(ctx, name, timeout=timeout, force=force)
    render.out.print(f"VM {name} is shut off ({outcome.detail})")


@app.command()
def destroy(name: Name) -> None:
    """Force a VM off at once (like pulling the power cord)."""
    from corral.compute import lifecycle

    with open_corral() as ctx:
        lifecycle.destroy(ctx, name)
    render.out.print(f"VM {name} destroyed (forced off)")


@app.command()
def pause(name: Name) -> None:
    """Pause a VM's vCPUs."""
    from corral.compute import lifecycle

    with open_corral() as ctx:
        lifecycle.pause(ctx, name)
    render.out.print(f"VM {name} paused")


@app.command("suspend")
def suspend(name: Name) -> None:
    """Pause a VM's vCPUs (same as pause)."""
    pause(name)


@app.command()
def resume(name: Name) -> None:
    """Resume a paused VM."""
    from corral.compute import lifecycle

    with open_corral() as ctx:
        lifecycle.resume(ctx, name)
    render.out.print(f"VM {name} resumed")


@app.command()
def reboot(
    name: Name,
    wait: Wait = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds the guest gets to shut down before a reset.")
    ] = 60.0,
) -> None:
    """Reboot a VM cleanly (ACPI shutdown, then reset; reset anyway after the timeout)."""
    from corral.compute import lifecycle

    with open_corral() as ctx:
        outcome = lifecycle.reboot(ctx, name, wait=wait, timeout=timeout)
    render.out.print(f"VM {name} {outcome.detail}{_took(outcome.seconds)}")


@app.command()
def delete(
    name: Name,
    keep_disks: Annotated[
        bool, typer.Option(help="Keep the disks (moved to the state dir's disks/).")
    ] = False,
) -> None:
    """Delete a VM that is not running, with its disks."""
    from corral.compute.define import delete as do_delete

    with open_corral() as ctx:
        kept = do_delete(ctx, name, keep_disks=keep_disks)
    render.out.print(f"VM {name} deleted")
    for path in kept:
        render.out.print(f"  kept disk {path}")


@app.command()
def info(name: Name, json_: Json = False) -> None:
    """Show a VM's state, resources, disks and console."""
    from corral.compute.inventory import info as do_info

    with open_corral() as ctx:
        v = do_info(ctx, name)
    if json_:
        render.print_json(v.as_dict())
        return
    render.fields(
        [
            ("Name", v.name),
            ("Project", v.project),
            ("UUID", v.uuid),
            ("State", f"{render.state_text(v.state)} ({v.reason})" if v.reason else v.state),
            ("vCPUs", str(v.vcpus)),
            ("Memory", render.size(v.memory)),
            ("Machine", v.machine),
            ("Image", v.image or "-"),
            ("Instance type", v.instance_type or "-"),
            ("Key pair", v.keypair or "-"),
            ("Instance ID", v.instance_id or "-"),
            ("SSH", f"{v.ssh} (corral ssh {v.name})" if v.ssh else "-"),
            ("PID", str(v.pid) if v.pid else "-"),
            ("Host CPU", "-" if v.host_cpu is None else f"{v.host_cpu:.1f}%"),
            ("Host memory", render.size(v.host_memory)),
            ("Provisioned", render.size(v.provisioned)),
            ("Used", render.size(v.used)),
            ("Forwards", ", ".join(v.forwards) or "-"),
            ("Console", f"corral console {v.name}" if v.console else "-"),
            ("VNC", v.vnc or "-"),
        ]
    )
    render.table(
        None,
        ["Disk", "Image", "Provisioned", "Used", "File"],
        (
            [d.name, d.image or "-", render.size(d.provisioned), render.size(d.used), d.path]
            for d in v.disks
        ),
    )


@app.command()
def console(name: Name) -> None:
    """Attach to a VM's serial console (detach with Ctrl-])."""
    from corral.cli.console import attach

    with open_corral() as ctx:
        attach(ctx, name)


@app.command()
def version() -> None:
    """Print corral's version."""
    from corral import __version__

    render.out.print(f"corral {__version__}")


def main() -> None:
    """Console-script entry point: run the CLI, turning corral's errors into one line each."""
    try:
        app()
    except CorralError as exc:
        render.err.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        if isinstance(exc, GuestTimeout) and exc.last_lines:
            render.err.print("last console lines:", soft_wrap=True)
            for line in exc.last_lines:
                render.err.print(f"  {line}", markup=False, soft_wrap=True)
        if isinstance(exc, LaunchError):
            for line in exc.output:
                render.err.print(f"  {line}", markup=False, soft_wrap=True)
            render.err.print(f"command: {' '.join(exc.argv)}", markup=False, soft_wrap=True)
        sys.exit(2 if exc.status == 404 else 1)
    except KeyboardInterrupt:
        render.err.print("interrupted")
        sys.exit(130)
