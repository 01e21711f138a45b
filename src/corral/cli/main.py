"""``corral``: the entry point, VM verbs, and the one place errors become exit statuses."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from corral.cli import render
from corral.cli.audit import audit_app
from corral.cli.clone import clone_cmd
from corral.cli.context import open_client
from corral.cli.fip import fip_app
from corral.cli.guest import guest_app
from corral.cli.host import host_app
from corral.cli.image import image_app
from corral.cli.keys import key_app
from corral.cli.launch import NET_HELP, launch_cmd, net_options, scp_cmd, ssh_cmd
from corral.cli.login import login_cmd, logout_cmd, whoami_cmd
from corral.cli.monitor import cdrom_app, monitor_cmd, reset_cmd
from corral.cli.net import net_app
from corral.cli.nic import nic_app
from corral.cli.projects import project_app
from corral.cli.serve import serve_cmd
from corral.cli.sg import sg_app
from corral.cli.snapshots import snapshot_app
from corral.cli.tasks import events_cmd, task_app
from corral.cli.tokens import token_app
from corral.cli.types import type_app
from corral.cli.usb import usb_app
from corral.cli.users import user_app
from corral.cli.vnc import vnc_cmd
from corral.cli.volumes import volume_app
from corral.client.transport import ApiError
from corral.errors import CorralError, GuestTimeout, LaunchError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from corral.api.schemas import TaskRead
    from corral.client import Client

M = TypeVar("M", bound="BaseModel")

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
app.add_typer(volume_app, name="volume")
app.add_typer(net_app, name="net")
app.add_typer(fip_app, name="fip")
app.add_typer(sg_app, name="sg")
app.add_typer(nic_app, name="nic")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(usb_app, name="usb")
app.command("clone")(clone_cmd)
app.command("launch")(launch_cmd)
app.command("ssh")(ssh_cmd)
app.command("scp")(scp_cmd)
app.command("serve")(serve_cmd)
app.add_typer(task_app, name="task")
app.command("events")(events_cmd)
app.command("monitor")(monitor_cmd)
app.command("reset")(reset_cmd)
app.command("vnc")(vnc_cmd)
app.add_typer(cdrom_app, name="cdrom")
app.command("login")(login_cmd)
app.command("logout")(logout_cmd)
app.command("whoami")(whoami_cmd)

Name = Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Return once the guest is ready.")]
Detach = Annotated[
    bool,
    typer.Option(
        "--detach",
        help="Print the task's id and return at once, leaving it to corrald "
        "(follow it with corral task show ID).",
    ),
]
Project = Annotated[
    str | None,
    typer.Option("--project", metavar="NAME", help="The project (default: default)."),
]


def _finish(api: Client, task: TaskRead, detach: bool = False) -> TaskRead | None:
    """Wait for a VM action's task to end (``None`` at once with ``detach``).

    Ctrl-C stops the waiting, not the task, and says so (exit status 130).

    :raise ApiError: the task ended as error (its message) or was cancelled.
    """
    from corral.client.transport import ApiError

    if detach:
        render.out.print(f"task {task.id} ({task.name} {task.target_name}) {task.status}")
        return None
    try:
        done = api.wait_task(task.id)
    except KeyboardInterrupt:
        render.err.print(
            f"interrupted: task {task.id} ({task.name} {task.target_name}) goes on in "
            f"corrald; follow it with corral task show {task.id}",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(130)
    if done.status != "success":
        lines = () if done.detail == "failed" else tuple(done.detail.splitlines())
        message = done.error or f"task {done.id} was {done.status}"
        raise ApiError(500, "TaskError", message, lines=lines)
    return done


def _said(name: str, task: TaskRead | None, template: str = "VM {name} {detail}") -> None:
    """Print what the task did (nothing for a detached task)."""
    if task is not None:
        render.out.print(template.format(name=name, detail=task.detail), markup=False)


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
    with open_client() as api:
        views = list(api.iter_vms(project=project, active=None if all_ else True))
    if json_:
        render.print_json([v.model_dump() for v in views])
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
    display: Annotated[
        str | None,
        typer.Option(help="none, vnc, or the host's curses, sdl or gtk where QEMU can show it."),
    ] = None,
    firmware: Annotated[
        str, typer.Option(help="bios or uefi, for images that boot from disk.")
    ] = "bios",
    cdrom: Annotated[
        str | None,
        typer.Option(help="An ISO on the daemon's host for a CD-ROM drive, booted (admins)."),
    ] = None,
    boot: Annotated[
        str | None,
        typer.Option(help="Boot first from disk, cdrom or network (iPXE); default: the ISO."),
    ] = None,
    net: Annotated[list[str] | None, typer.Option("--net", help=NET_HELP)] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it right away.")] = False,
    wait: Wait = False,
    project: Project = None,
) -> None:
    """Define a VM from an image (its root disk is a copy-on-write clone) in a project,
    within its quota."""
    from corral.api.schemas import VmCreate
    from corral.api.schemas.vms import VmStartCreate

    with open_client() as api:
        vm = api.create_vm(
            _body(
                VmCreate,
                name=name,
                image=image,
                vcpus=vcpus,
                memory=memory,
                disk_size=disk_size,
                data_disks=list(data_disk or ()),
                machine=machine,
                cpu=cpu,
                forwards=list(forward or ()),
                vnc=vnc,
                display=display,
                firmware=firmware,
                project=project or "default",
                cdrom=cdrom,
                boot=boot,
                networks=net_options(net),
            )
        )
        render.out.print(f"VM {vm.name} defined ({vm.vcpus} vCPU, {render.size(vm.memory)})")
        if start:
            _said(name, _finish(api, api.start_vm(name, VmStartCreate(wait=wait))))


def _body(model: type[M], **values: object) -> M:
    """A request body from options, refused here as the daemon would refuse it.

    :raise InvalidInput: naming the field.
    """
    from pydantic import ValidationError

    from corral.spec import invalid_input

    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid_input(exc) from None


@app.command()
def update(
    name: Name,
    vcpus: Annotated[int | None, typer.Option(help="Virtual CPUs.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory, e.g. 256M or 2G.")] = None,
    forward: Annotated[
        list[str] | None,
        typer.Option(
            help="Forward a host port: [tcp|udp:][ADDR:]HOSTPORT:GUESTPORT (repeatable); "
            "replaces the VM's forwards."
        ),
    ] = None,
    no_forwards: Annotated[
        bool, typer.Option("--no-forwards", help="Remove every port forward.")
    ] = False,
) -> None:
    """Change a VM's vCPUs, memory or port forwards while it does not run (they take
    effect at its next start); growth counts against its project's quota."""
    from corral.api.schemas.vms import VmUpdate
    from corral.errors import InvalidInput

    forwards = [] if no_forwards else forward
    if no_forwards and forward:
        raise InvalidInput("forward", "--forward and --no-forwards exclude each other")
    if vcpus is None and memory is None and forwards is None:
        raise InvalidInput(
            "update", "nothing to change; give --vcpus, --memory, --forward or --no-forwards"
        )
    change = _body(VmUpdate, vcpus=vcpus, memory=memory, forwards=forwards)
    with open_client() as api:
        vm = api.update_vm(name, change)
    shown = f"VM {vm.name} updated ({vm.vcpus} vCPU, {render.size(vm.memory)})"
    if forwards is not None:
        shown += f"; forwards: {', '.join(vm.forwards) or 'none'}"
    render.out.print(shown, markup=False)


@app.command()
def start(
    name: Name,
    wait: Wait = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the guest to be ready.")
    ] = 120.0,
    detach: Detach = False,
) -> None:
    """Start a VM."""
    from corral.api.schemas.vms import VmStartCreate

    options = _body(VmStartCreate, wait=wait, timeout=timeout)
    with open_client() as api:
        _said(name, _finish(api, api.start_vm(name, options), detach))


@app.command()
def stop(
    name: Name,
    timeout: Annotated[float, typer.Option(help="Seconds the guest gets to power off.")] = 60.0,
    force: Annotated[
        bool, typer.Option("--force/--no-force", help="Force off after the timeout.")
    ] = True,
    detach: Detach = False,
) -> None:
    """Shut a VM down (ACPI power button; forced off after the timeout)."""
    from corral.api.schemas.vms import VmStopCreate

    options = _body(VmStopCreate, timeout=timeout, force=force)
    with open_client() as api:
        _said(name, _finish(api, api.stop_vm(name, options), detach), "VM {name} is {detail}")


@app.command()
def destroy(name: Name, detach: Detach = False) -> None:
    """Force a VM off at once (like pulling the power cord)."""
    with open_client() as api:
        _said(name, _finish(api, api.vm_action(name, "destroy"), detach))


@app.command()
def pause(name: Name) -> None:
    """Pause a VM's vCPUs."""
    with open_client() as api:
        _said(name, _finish(api, api.vm_action(name, "pause")))


@app.command("suspend")
def suspend(name: Name) -> None:
    """Pause a VM's vCPUs (same as pause)."""
    pause(name)


@app.command()
def resume(name: Name) -> None:
    """Resume a paused VM."""
    with open_client() as api:
        _said(name, _finish(api, api.vm_action(name, "resume")))


@app.command()
def reboot(
    name: Name,
    wait: Wait = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds the guest gets to shut down before a reset.")
    ] = 60.0,
    detach: Detach = False,
) -> None:
    """Reboot a VM cleanly (ACPI shutdown, then reset; reset anyway after the timeout)."""
    from corral.api.schemas.vms import VmRebootCreate

    options = _body(VmRebootCreate, wait=wait, timeout=timeout)
    with open_client() as api:
        _said(name, _finish(api, api.reboot_vm(name, options), detach))


@app.command()
def delete(
    names: Annotated[
        list[str], typer.Argument(metavar="NAME...", help="The VMs' names.", show_default=False)
    ],
    keep_disks: Annotated[
        bool, typer.Option(help="Keep the disks (moved to the state dir's disks/).")
    ] = False,
    detach: Detach = False,
) -> None:
    """Delete VMs with their disks; a running one is powered off first, as a cloud's
    terminate does (its guest is not asked to shut down: use `corral stop` for that)."""
    from corral.api.schemas.vms import KEPT_DISK

    with open_client() as api:
        for name in names:
            if api.get_vm(name).state not in ("defined", "shutoff", "crashed"):
                render.out.print(f"VM {name} is powered off", markup=False)
                _finish(api, api.vm_action(name, "destroy"), False)
            done = _finish(api, api.delete_vm(name, keep_disks=keep_disks), detach)
            if done is None:
                continue
            said, *kept = done.detail.split(KEPT_DISK)
            render.out.print(f"VM {name} {said}", markup=False)
            for path in kept:
                render.out.print(f"  kept disk {path}", markup=False)


@app.command()
def info(name: Name, json_: Json = False) -> None:
    """Show a VM's state, resources, disks and console."""
    with open_client() as api:
        v = api.get_vm(name)
    if json_:
        render.print_json(v.model_dump())
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
def console(
    name: Name,
    text: Annotated[
        bool,
        typer.Option(
            "--text", help="The VM's text display (display curses) instead of its serial console."
        ),
    ] = False,
) -> None:
    """Attach to a VM's serial console, or its text display (detach with Ctrl-])."""
    from corral.cli.console import attach

    with open_client() as api:
        attach(api, name, text)


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
        if isinstance(exc, ApiError):
            for line in exc.lines:
                render.err.print(f"  {line}", markup=False, soft_wrap=True)
        if isinstance(exc, LaunchError):
            for line in exc.output:
                render.err.print(f"  {line}", markup=False, soft_wrap=True)
            render.err.print(f"command: {' '.join(exc.argv)}", markup=False, soft_wrap=True)
        sys.exit(2 if exc.status == 404 else 1)
    except KeyboardInterrupt:
        render.err.print("interrupted")
        sys.exit(130)
