"""``corral task``: the daemon's recent tasks (vSphere's "Recent Tasks"), through its API."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from corral.client.api import Client

task_app = typer.Typer(
    help="List, show and cancel corrald's tasks (the daemon is started if none runs).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TaskId = Annotated[str, typer.Argument(metavar="ID", help="The task's id.")]

_STATUS_STYLE = {"success": "green", "error": "red", "running": "cyan", "cancelled": "dim"}


def _resolve(api: Client, task_id: str) -> str:
    """A whole task id from the first characters the list shows (unique among 1,000)."""
    if len(task_id) >= 36:
        return task_id
    from corral.errors import InvalidInput, NotFound

    found = [t.id for t in api.list_tasks(limit=1000).items if t.id.startswith(task_id)]
    if not found:
        raise NotFound("task", task_id)
    if len(found) > 1:
        raise InvalidInput("id", f"{task_id!r} is the start of {len(found)} tasks; give more")
    return found[0]


def _time(iso: str | None) -> str:
    return "-" if iso is None else iso[:19].replace("T", " ")


@task_app.command("list")
def list_cmd(
    status: Annotated[
        str | None, typer.Option(help="Only tasks in this status (queued, running, ...).")
    ] = None,
    vm: Annotated[str | None, typer.Option(help="Only tasks on this VM.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    json_: Json = False,
) -> None:
    """Recent tasks, newest first."""
    with open_client() as api:
        tasks = api.list_tasks(status=status, target_name=vm, limit=limit).items
    if json_:
        render.print_json([t.model_dump() for t in tasks])
        return
    render.table(
        None,
        ["ID", "Task", "Target", "Status", "Progress", "Initiated by", "Requested", "Detail"],
        (
            [
                t.id[:8],
                t.name,
                f"{t.target_kind} {t.target_name}",
                f"[{_STATUS_STYLE.get(t.status, '')}]{t.status}[/]"
                if t.status in _STATUS_STYLE
                else t.status,
                f"{t.progress}%",
                t.initiated_by,
                _time(t.requested_at),
                t.error or t.detail,
            ]
            for t in tasks
        ),
    )


@task_app.command("show")
def show_cmd(task_id: TaskId, json_: Json = False) -> None:
    """One task."""
    with open_client() as api:
        t = api.get_task(_resolve(api, task_id))
    if json_:
        render.print_json(t.model_dump())
        return
    render.fields(
        [
            ("ID", t.id),
            ("Task", t.name),
            ("Target", f"{t.target_kind} {t.target_name}"),
            ("Status", t.status),
            ("Progress", f"{t.progress}%"),
            ("Detail", t.detail or "-"),
            ("Error", t.error or "-"),
            ("Initiated by", t.initiated_by),
            ("Requested", _time(t.requested_at)),
            ("Started", _time(t.started_at)),
            ("Completed", _time(t.completed_at)),
            ("Cancellable", "yes" if t.cancellable else "no"),
        ]
    )


@task_app.command("cancel")
def cancel_cmd(task_id: TaskId) -> None:
    """Cancel a queued task, or a running one whose operation allows it."""
    with open_client() as api:
        t = api.cancel_task(_resolve(api, task_id))
    render.out.print(f"task {t.id} {t.status}", markup=False)


def events_cmd(
    json_: Json = False,
    count: Annotated[
        int | None, typer.Option(help="Stop after this many events (default: follow).")
    ] = None,
    since: Annotated[
        int | None,
        typer.Option(help="First replay the held events after this event id (0: all held)."),
    ] = None,
) -> None:
    """Follow corrald's events: task updates and VM state changes, as they happen."""
    with open_client() as api:
        for seen, event in enumerate(api.events(last_id=since), start=1):
            if json_:
                render.print_json(event)
            else:
                render.out.print(_event_line(event), markup=False)
            sys.stdout.flush()
            if count is not None and seen >= count:
                return


def _event_line(event: dict[str, object]) -> str:
    data = event.get("data")
    info = data if isinstance(data, dict) else {}
    at = str(event.get("at", ""))[11:19]
    if event.get("kind") == "task":
        return (
            f"{at} task {info.get('name')} {info.get('target_name')}: {info.get('status')} "
            f"{info.get('progress')}% {info.get('error') or info.get('detail') or ''}"
        ).rstrip()
    if event.get("kind") == "vm":
        return f"{at} vm {info.get('name')}: {info.get('previous')} -> {info.get('state')}"
    if event.get("kind") == "vm.qmp":
        details = info.get("details")
        said = " ".join(f"{k}={v}" for k, v in details.items()) if isinstance(details, dict) else ""
        return f"{at} vm {info.get('name')}: QMP {info.get('event')} {said}".rstrip()
    return f"{at} {event.get('kind')}: {data}"
