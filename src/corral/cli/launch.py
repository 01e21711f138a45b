"""``corral launch``, ``corral ssh`` and ``corral scp``: instances from images, and logging in,
through corrald's API.

``launch`` starts the launch's task, then follows it (``GET /launch/{task_id}``, answered at
each change) and shows each instance's phases (clone, seed, start, boot, ready) with their
durations as they happen: a live table on a terminal, one line per finished phase otherwise.
Interrupted, it leaves the task running and says so. ``ssh`` and ``scp`` ask the API how to
reach the VM (``GET /vms/{name}/ssh``) and run the system's OpenSSH client, checking the
guest's host keys as its console showed them (see :mod:`corral.client.ssh`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from rich.table import Table

    from corral.api.schemas.core import NicCreate
    from corral.api.schemas.launch import LaunchInstanceRead, LaunchRead
    from corral.client.api import Client

#: Shows each new state of a launch.
Show = Callable[["LaunchRead"], None]


#: Help of ``--net``, for ``corral create`` and ``corral launch``.
NET_HELP = (
    "A NIC on a network: NAME or NAME:IP (a fixed address); 'user' is user-mode NAT "
    "(repeatable, in order; with --net the VM has only these NICs)."
)


def net_options(values: list[str] | None) -> list[NicCreate]:
    """``--net`` values as the API's NICs (``lan`` or ``lan:10.77.0.9``), unchecked: the
    daemon checks them."""
    from corral.api.schemas.core import NicCreate

    nics: list[NicCreate] = []
    for value in values or ():
        network, _, ip = value.partition(":")
        nics.append(NicCreate.model_construct(network=network, ip=ip or None))
    return nics


def launch_cmd(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Instance name (NAME-1..N with --count).")
    ],
    image: Annotated[str, typer.Option("--image", "-i", help="Base image.")],
    instance_type: Annotated[
        str, typer.Option("--type", "-t", help="Instance type (corral type list).")
    ],
    key: Annotated[str, typer.Option("--key", "-k", help="Key pair to install (corral key list).")],
    user_data: Annotated[
        Path | None,
        typer.Option(help="cloud-init user-data file (#cloud-config is merged and checked)."),
    ] = None,
    count: Annotated[int, typer.Option("--count", "-n", help="Launch N instances at once.")] = 1,
    disk_size: Annotated[
        str | None, typer.Option(help="Root disk size instead of the type's (e.g. 20G).")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Return once SSH answers (--no-wait: once QEMU runs; the task goes on).",
        ),
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for SSH.")] = 120.0,
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated", help="No network access for the guest; only its SSH port is reachable."
        ),
    ] = False,
    net: Annotated[list[str] | None, typer.Option("--net", help=NET_HELP)] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            metavar="NAME",
            help="The project the instances go into, within its quota (default: default); "
            "the key pair must be the project's, the image the project's or default's.",
        ),
    ] = None,
) -> None:
    """Launch instances: clone an image, install a key, boot, wait for SSH."""
    from corral.api.schemas.launch import LaunchCreate
    from corral.errors import InvalidInput

    fields: dict[str, Any] = {
        "name": name,
        "image": image,
        "instance_type": instance_type,
        "keypair": key,
        "count": count,
        "isolated": isolated,
        "timeout": timeout,
    }
    if user_data is not None:
        try:
            fields["user_data"] = user_data.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("user_data", f"{user_data} is not UTF-8 text") from None
        except OSError as exc:
            raise InvalidInput("user_data", f"cannot read {user_data}: {exc.strerror}") from None
    if disk_size is not None:
        fields["disk_size"] = disk_size
    if project is not None:
        fields["project"] = project
    if net:
        fields["networks"] = net_options(net)
    with open_client() as api:
        task = api.launch(LaunchCreate.model_construct(**fields))  # the daemon validates it
        try:
            with _display(json_) as show:
                last = _follow(api, task.id, show, wait)
        except KeyboardInterrupt:
            render.err.print(
                f"interrupted: the launch goes on as task {task.id} "
                f"(corral task show {task.id[:8]})",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        _outcome(api, last, json_)


def _follow(api: Client, task_id: str, show: Show, wait: bool) -> LaunchRead:
    """Show each state of the launch until it ends (without ``wait``: until every instance
    runs); its last state."""
    from corral.client.transport import ApiError
    from corral.errors import CorralError

    last: LaunchRead | None = None
    try:
        for last in api.follow_launch(task_id):
            show(last)
            if not wait and all(i.status != "pending" for i in last.instances):
                break
    except ApiError as exc:
        if exc.status != 404:
            raise
        task = api.get_task(task_id)  # the daemon restarted and forgot the launch
        raise CorralError(
            f"launch task {task_id} is {task.status}: {task.error or task.detail}"
        ) from exc
    if last is None:
        raise CorralError(f"launch task {task_id} told nothing")
    return last


def _outcome(api: Client, last: LaunchRead, json_: bool) -> None:
    """Print how each instance is reached, or why the launch failed."""
    from corral.client.transport import ApiError

    error = last.error
    if error is not None:
        if not json_ and error.error == "LaunchFailed":
            _summary(last.instances, _ssh_commands(api, last.instances))
        if error.last_lines:
            if error.error in ("LaunchFailed", "GuestTimeout"):
                render.err.print("last console lines:", style="dim")
            for line in error.last_lines:
                render.err.print(f"  {line}", markup=False, highlight=False)
        raise ApiError(error.status, error.error, error.message, error.field)
    commands = _ssh_commands(api, last.instances)
    if json_:
        render.print_json([_as_dict(i, commands.get(i.name)) for i in last.instances])
        return
    _summary(last.instances, commands)


def _ssh_commands(api: Client, instances: list[LaunchInstanceRead]) -> dict[str, list[str]]:
    """The OpenSSH command that logs in to each ready instance from here."""
    from corral.compute.sshcmd import ssh_argv
    from corral.errors import CorralError

    commands: dict[str, list[str]] = {}
    for i in instances:
        if i.status != "ready":
            continue
        try:
            commands[i.name] = ssh_argv(api.ssh_target(i.name))
        except CorralError as exc:
            render.err.print(f"warning: {i.name}: {exc.message}", markup=False, soft_wrap=True)
    return commands


def _seconds(instance: LaunchInstanceRead) -> float:
    return sum(p.seconds or 0.0 for p in instance.phases.values() if p.state == "done")


def _as_dict(instance: LaunchInstanceRead, command: list[str] | None) -> dict[str, object]:
    from corral.compute.sshcmd import shell_quote

    identity = None
    if command is not None and "-i" in command:
        identity = command[command.index("-i") + 1]
    return {
        "name": instance.name,
        "instance_id": instance.instance_id,
        "status": instance.status,
        "address": instance.address,
        "port": instance.port,
        "user": instance.user,
        "identity": identity,
        "phases": {
            k: round(v.seconds or 0.0, 3) for k, v in instance.phases.items() if v.state == "done"
        },
        "ssh": shell_quote(command) if command else None,
    }


def _summary(instances: list[LaunchInstanceRead], commands: dict[str, list[str]]) -> None:
    from corral.compute.sshcmd import shell_quote

    for i in instances:
        render.out.print(
            f"{i.name}: {i.status} after {_seconds(i):.2f} s, {i.instance_id}, "
            f"ssh on {i.address} port {i.port} as {i.user}",
            markup=False,
        )
        command = commands.get(i.name)
        if command:
            render.out.print(f"  corral ssh {i.name}", markup=False)
            render.out.print(f"  {shell_quote(command)}", markup=False, soft_wrap=True)


def _phases() -> tuple[str, ...]:
    from corral.api.schemas.launch import PhaseName

    return get_args(PhaseName)


@contextmanager
def _display(quiet: bool) -> Iterator[Show]:
    """Shows a launch's states: nothing (``quiet``), a line per finished phase (stderr is no
    terminal), or a live table."""
    if quiet:
        yield _nothing
        return
    if not sys.stderr.isatty():
        yield _Lines()
        return
    with _LiveTable() as live:
        yield live.update


def _nothing(launch: LaunchRead) -> None:
    del launch


class _Lines:
    """One line per phase that ends or fails, once."""

    def __init__(self) -> None:
        self.told: set[tuple[str, str]] = set()

    def __call__(self, launch: LaunchRead) -> None:
        for instance in launch.instances:
            for phase, now in instance.phases.items():
                if now.state == "running" or (instance.name, phase) in self.told:
                    continue
                self.told.add((instance.name, phase))
                word = " failed after" if now.state == "failed" else ""
                render.err.print(
                    f"{instance.name}: {phase:<5}{word} {now.seconds or 0:.2f} s", markup=False
                )


class _LiveTable:
    """A live table: one row per instance, one column per phase with its duration."""

    def __init__(self) -> None:
        from rich.live import Live

        self.launch: LaunchRead | None = None
        self.live = Live(self._table(), console=render.err, refresh_per_second=12)

    def __enter__(self) -> _LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._table())
        self.live.__exit__(None, None, None)

    def update(self, launch: LaunchRead) -> None:
        self.launch = launch
        self.live.update(self._table())

    def _table(self) -> Table:
        from rich import box
        from rich.table import Table

        phases = _phases()
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False)
        table.add_column("Instance")
        for phase in phases:
            table.add_column(phase.capitalize(), justify="right")
        started = [] if self.launch is None else [i for i in self.launch.instances if i.phases]
        for instance in sorted(started, key=lambda i: _natural(i.name)):
            cells = []
            for phase in phases:
                now = instance.phases.get(phase)  # type: ignore[call-overload]
                if now is None:
                    cells.append("")
                elif now.state == "running":
                    cells.append("[cyan]…[/]")
                elif now.state == "done":
                    cells.append(f"{now.seconds or 0:.2f} s")
                else:
                    cells.append("[red]failed[/]")
            table.add_row(instance.name, *cells)
        return table


def _natural(name: str) -> tuple[str, int]:
    """``web-2`` before ``web-10``."""
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def ssh_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")],
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="COMMAND", help="Command to run (after --); a shell if none."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-l", help="Log in as this user.")] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", "-i", help="Private key file to use.")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="More ssh -o options.")
    ] = None,
    print_: Annotated[
        bool, typer.Option("--print", help="Print the ssh command instead of running it.")
    ] = False,
) -> None:
    """Log in to a VM with the system's OpenSSH client (its key, port and host keys)."""
    from corral.compute.sshcmd import shell_quote, ssh_argv

    with open_client() as api:
        found = api.ssh_target(name, user, identity)
    extra = [part for opt in option or () for part in ("-o", opt)]
    argv = ssh_argv(found, command or (), extra)
    if print_:
        render.out.print(shell_quote(argv), markup=False, soft_wrap=True)
        return
    _exec(argv)


def scp_cmd(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATHS", help="Sources then destination; NAME:PATH is a path on VM NAME."
        ),
    ],
    user: Annotated[str | None, typer.Option("--user", "-l", help="Log in as this user.")] = None,
    identity: Annotated[
        str | None, typer.Option("--identity", "-i", help="Private key file to use.")
    ] = None,
    recursive: Annotated[bool, typer.Option("-r", help="Copy directories.")] = False,
) -> None:
    """Copy files to or from a VM with the system's scp."""
    from corral.compute.sshcmd import scp_argv
    from corral.errors import InvalidInput

    if len(paths) < 2:
        raise InvalidInput("paths", "give at least one source and a destination")
    vms: set[str] = set()
    local: list[str] = []
    for path in paths:
        head, sep, rest = path.partition(":")
        if sep and "/" not in head and head:
            vms.add(head)
            local.append(":" + rest)
        else:
            local.append(path)
    if len(vms) != 1:
        raise InvalidInput("paths", "name exactly one VM, as NAME:PATH, on one side of the copy")
    with open_client() as api:
        found = api.ssh_target(vms.pop(), user, identity)
    _exec(scp_argv(found, local[:-1], local[-1], ["-r"] if recursive else []))


def _exec(argv: list[str]) -> None:
    """Replace this process with ``argv``: the terminal, signals and exit status are ssh's."""
    import shutil

    from corral.errors import HostError

    program = shutil.which(argv[0])
    if program is None:
        raise HostError(f"{argv[0]} is not installed (apt-get install openssh-client)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program, argv)  # noqa: S606
