"""``corral monitor``, ``corral reset`` and ``corral cdrom``: QEMU's monitor, the reset button and
the CD-ROM drive, through corrald's API."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.cli import render
from corral.cli.context import open_client
from corral.errors import InvalidInput

if TYPE_CHECKING:
    from corral.api.schemas.monitor import MonitorRead
    from corral.client import Client

Name = Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")]

cdrom_app = typer.Typer(
    help="Insert an ISO into a VM's CD-ROM drive, or eject it (live while the VM runs).",
    no_args_is_help=True,
)

#: What the interactive prompt says it takes.
_PROMPT_HELP = (
    'Type a QMP command (query-status, or {"execute": ..., "arguments": ...}, or a name and '
    "its arguments as JSON), hmp followed by an HMP command line, or Ctrl-D to leave."
)


def parse_qmp_line(line: str) -> dict[str, Any]:
    """A QMP message from what a user typed: a whole JSON message, or a command name with its
    arguments as a JSON object after it.

    :raise InvalidInput: (field ``qmp``) the JSON does not parse or is not an object.
    """
    text = line.strip()
    if text.startswith("{"):
        message = _json_object(text)
    else:
        execute, _, rest = text.partition(" ")
        message = {"execute": execute}
        if rest.strip():
            message["arguments"] = _json_object(rest)
    return message


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput("qmp", f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise InvalidInput("qmp", "must be a JSON object")
    return value


def _show(answer: MonitorRead, hmp: bool) -> bool:
    """Print QEMU's answer; ``False`` when it was an error."""
    if answer.error is not None:
        render.err.print(f"error: {answer.error.class_}: {answer.error.desc}", markup=False)
        return False
    if hmp:
        sys.stdout.write(str(answer.return_ or ""))
        sys.stdout.flush()
    else:
        render.print_json(answer.return_)
    return True


def monitor_cmd(
    name: Name,
    qmp: Annotated[
        str | None,
        typer.Option(
            "--qmp",
            metavar="JSON",
            help='A QMP command: \'{"execute": "query-status"}\' (or just its name).',
        ),
    ] = None,
    hmp: Annotated[
        str | None,
        typer.Option("--hmp", metavar="LINE", help="An HMP command line: 'info status'."),
    ] = None,
) -> None:
    """Send a command to a running VM's QEMU monitor and print the answer; with neither
    --qmp nor --hmp, a prompt on a terminal (Tab completes QMP command names).

    Admins send any command; operators the read-only queries (query-status, query-block,
    info status, info block, ...).
    """
    if qmp is not None and hmp is not None:
        raise InvalidInput("options", "give one of --qmp and --hmp")
    with open_client() as api:
        if qmp is not None:
            ok = _show(api.monitor_qmp(name, parse_qmp_line(qmp)), hmp=False)
        elif hmp is not None:
            ok = _show(api.monitor_hmp(name, hmp), hmp=True)
        else:
            if not sys.stdin.isatty():
                raise InvalidInput(
                    "options",
                    "give --qmp or --hmp: standard input is not a terminal for the prompt",
                )
            _prompt(api, name)
            ok = True
    if not ok:
        raise typer.Exit(1)


def _prompt(api: Client, name: str) -> None:
    """Read commands until end of input, printing each answer; a refused one does not end it."""
    import readline

    from corral.client.transport import ApiError

    commands = _command_names(api, name)

    def complete(text: str, state: int) -> str | None:
        matches = [c for c in [*commands, "hmp"] if c.startswith(text)]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t{")
    readline.parse_and_bind("tab: complete")
    render.err.print(_PROMPT_HELP, markup=False)
    while True:
        try:
            line = input(f"({name}) ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            continue
        text = line.strip()
        if not text:
            continue
        try:
            if text == "hmp" or text.startswith("hmp "):
                _show(api.monitor_hmp(name, text[3:].strip()), hmp=True)
            else:
                _show(api.monitor_qmp(name, parse_qmp_line(text)), hmp=False)
        except (ApiError, InvalidInput) as exc:
            render.err.print(f"error: {exc}", markup=False)


def _command_names(api: Client, name: str) -> list[str]:
    """The QMP commands of the VM's QEMU, for completion."""
    answer = api.monitor_qmp(name, {"execute": "query-commands"})
    if answer.error is not None or not isinstance(answer.return_, list):
        return []
    return sorted(str(entry["name"]) for entry in answer.return_ if isinstance(entry, dict))


def reset_cmd(name: Name) -> None:
    """Reset a running VM at once, as its reset button does (the guest is not asked; see
    reboot for a clean one)."""
    with open_client() as api:
        vm = api.reset_vm(name)
    render.out.print(f"VM {vm.name} reset", markup=False)


@cdrom_app.command("insert")
def insert_cmd(
    name: Name,
    iso: Annotated[
        str, typer.Argument(metavar="ISO", help="An ISO 9660 image on corrald's host (admins).")
    ],
    boot: Annotated[
        bool, typer.Option("--boot", help="Boot from it (firmware boot), from the next start.")
    ] = False,
) -> None:
    """Insert an ISO into the VM's CD-ROM drive; a VM that is shut off gets a drive if it has
    none. The next start keeps it."""
    from pathlib import Path

    path = iso if iso.startswith("/") else str(Path(iso).absolute())
    with open_client() as api:
        drive = api.insert_cdrom(name, path, boot=boot)
    booting = " (boots from it)" if drive.boot else ""
    render.out.print(f"VM {name}: {drive.path} in the CD-ROM drive{booting}", markup=False)


@cdrom_app.command("eject")
def eject_cmd(name: Name) -> None:
    """Eject the medium from the VM's CD-ROM drive."""
    with open_client() as api:
        api.eject_cdrom(name)
    render.out.print(f"VM {name}: CD-ROM drive empty", markup=False)
