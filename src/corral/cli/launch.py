"""``corral launch``, ``corral ssh`` and ``corral scp``: instances from images, and logging in.

``launch`` shows each instance's phases (clone, seed, start, boot, ready) with their
durations as they happen: a live table on a terminal, one line per finished phase otherwise.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_corral

if TYPE_CHECKING:
    from rich.table import Table

    from corral.compute.launch import Instance, PhaseEvent, ProgressFn


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
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Return once SSH answers.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for SSH.")] = 120.0,
    isolated: Annotated[
        bool,
        typer.Option(
            "--isolated", help="No network access for the guest; only its SSH port is reachable."
        ),
    ] = False,
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
    from corral.compute.launch import LaunchFailed, LaunchRequest, launch
    from corral.errors import InvalidInput

    text: str | None = None
    if user_data is not None:
        try:
            text = user_data.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("user_data", f"{user_data} is not UTF-8 text") from None
        except OSError as exc:
            raise InvalidInput("user_data", f"cannot read {user_data}: {exc.strerror}") from None
    req = LaunchRequest(
        name=name,
        image=image,
        instance_type=instance_type,
        keypair=key,
        user_data=text,
        count=count,
        disk_size=disk_size,
        wait=wait,
        timeout=timeout,
        isolated=isolated,
        project=project,
    )
    with open_corral() as ctx, _display(json_) as progress:
        try:
            instances = launch(ctx, req, progress)
        except LaunchFailed as exc:
            if not json_:
                _summary(exc.instances)
                if exc.last_lines:
                    render.err.print("last console lines:", style="dim")
                    for line in exc.last_lines:
                        render.err.print(f"  {line}", markup=False, highlight=False)
            raise
    if json_:
        render.print_json([_as_dict(i) for i in instances])
        return
    _summary(instances)


def _as_dict(instance: Instance) -> dict[str, object]:
    from corral.compute.sshcmd import shell_quote

    return {
        "name": instance.name,
        "instance_id": instance.instance_id,
        "status": instance.status,
        "address": instance.host,
        "port": instance.port,
        "user": instance.user,
        "identity": instance.identity,
        "phases": {k: round(v, 3) for k, v in instance.phases.items()},
        "ssh": shell_quote(instance.ssh_command) if instance.ssh_command else None,
    }


def _summary(instances: list[Instance]) -> None:
    from corral.compute.sshcmd import shell_quote

    for i in instances:
        total = f"{i.seconds:.2f} s"
        render.out.print(
            f"{i.name}: {i.status} after {total}, {i.instance_id}, "
            f"ssh on {i.host} port {i.port} as {i.user}",
            markup=False,
        )
        if i.ssh_command:
            render.out.print(f"  corral ssh {i.name}", markup=False)
            render.out.print(f"  {shell_quote(i.ssh_command)}", markup=False, soft_wrap=True)


@contextmanager
def _display(quiet: bool) -> Iterator[ProgressFn | None]:
    """A progress reporter for :func:`corral.compute.launch.launch`."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        lock = threading.Lock()

        def line(event: PhaseEvent) -> None:
            if event.status == "begin":
                return
            with lock:
                word = " failed after" if event.status == "fail" else ""
                render.err.print(
                    f"{event.instance}: {event.phase:<5}{word} {event.seconds or 0:.2f} s",
                    markup=False,
                )

        yield line
        return
    with _LiveTable() as live:
        yield live.update


class _LiveTable:
    """A live table: one row per instance, one column per phase with its duration."""

    def __init__(self) -> None:
        from rich.live import Live

        self.rows: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self.live = Live(self._table(), console=render.err, refresh_per_second=12)

    def __enter__(self) -> _LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._table())
        self.live.__exit__(None, None, None)

    def update(self, event: PhaseEvent) -> None:
        with self.lock:
            row = self.rows.setdefault(event.instance, {})
            if event.status == "begin":
                row[event.phase] = "[cyan]…[/]"
            elif event.status == "end":
                row[event.phase] = f"{event.seconds or 0:.2f} s"
            else:
                row[event.phase] = "[red]failed[/]"
            self.live.update(self._table())

    def _table(self) -> Table:
        from rich import box
        from rich.table import Table

        from corral.compute.launch import PHASES

        table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False)
        table.add_column("Instance")
        for phase in PHASES:
            table.add_column(phase.capitalize(), justify="right")
        for name in sorted(self.rows, key=_natural):
            row = self.rows[name]
            table.add_row(name, *(row.get(p, "") for p in PHASES))
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
    from corral.compute.ssh import target
    from corral.compute.sshcmd import shell_quote, ssh_argv

    with open_corral() as ctx:
        found = target(ctx, name, user, identity)
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
    from corral.compute.ssh import target
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
    with open_corral() as ctx:
        found = target(ctx, vms.pop(), user, identity)
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
