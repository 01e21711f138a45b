"""``corral snapshot``: disk snapshots of a VM and their tree, through corrald's API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from corral.api.schemas.snapshots import SnapshotRead

snapshot_app = typer.Typer(
    help="Take, list, revert to and delete snapshots of a VM, of its disks or with its memory "
    "(the daemon is started if none runs).",
    no_args_is_help=True,
)

Vm = Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")]
Snap = Annotated[str, typer.Argument(metavar="SNAP", help="The snapshot's name.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Say what it would do and lose; change nothing.")
]
Detach = Annotated[
    bool, typer.Option("--detach", help="Print the task's id instead of waiting for it.")
]


@snapshot_app.command("create")
def create_cmd(
    vm: Vm,
    snap: Snap,
    description: Annotated[str, typer.Option(help="A line that says what it is for.")] = "",
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Also save the guest's memory and device state (running or paused VM): a "
            "revert resumes it where it was.",
        ),
    ] = False,
    detach: Detach = False,
) -> None:
    """Snapshot a running or stopped VM's disks, all at once; --memory: its memory too."""
    from corral.cli.main import _finish

    with open_client() as api:
        done = _finish(api, api.create_snapshot(vm, snap, description, memory), detach)
    if done is not None:
        render.out.print(f"VM {vm}: {done.detail}", markup=False)


def tree_lines(items: list[SnapshotRead]) -> list[str]:
    """The tree as indented lines, children under their parent; ``*`` marks where the VM
    is (its unsaved state hangs under the current snapshot as ``(now)``)."""
    children: dict[str | None, list[SnapshotRead]] = {}
    for item in items:
        children.setdefault(item.parent, []).append(item)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for item in children.get(parent, []):
            mark = " *" if item.current else ""
            when = item.created_at[:19].replace("T", " ")
            text = f" - {item.description}" if item.description else ""
            kind = ", memory" if item.kind == "memory" else ""
            line = f"{item.name}{mark}  ({when}, {item.vm_state}{kind}){text}"
            lines.append(f"{'  ' * depth}{line}")
            if item.current:
                lines.append(f"{'  ' * (depth + 1)}(now)")
            walk(item.name, depth + 1)

    walk(None, 0)
    if not any(item.current for item in items):
        lines.append("(now)")
    return lines


@snapshot_app.command("list")
def list_cmd(vm: Vm, json_: Json = False) -> None:
    """The VM's snapshot tree; * marks the snapshot its disks sit on, (now) its own state."""
    with open_client() as api:
        items = api.list_snapshots(vm).items
    if json_:
        render.print_json([s.model_dump() for s in items])
        return
    if not items:
        render.out.print(f"VM {vm} has no snapshots", markup=False)
        return
    for line in tree_lines(items):
        render.out.print(line, markup=False, soft_wrap=True)


def _steps(steps: list[str]) -> None:
    for step in steps:
        render.out.print(step, markup=False, soft_wrap=True)


@snapshot_app.command("revert")
def revert_cmd(vm: Vm, snap: Snap, dry_run: DryRun = False, detach: Detach = False) -> None:
    """Put a stopped VM's disks back to a snapshot, or any VM to a memory snapshot (a running
    one is destroyed first, the guest resumes where it was); what it wrote since its last
    snapshot is lost (see --dry-run); every snapshot stays."""
    from corral.cli.main import _finish

    with open_client() as api:
        if dry_run:
            _steps(api.revert_plan(vm, snap).steps)
            return
        done = _finish(api, api.revert_snapshot(vm, snap), detach)
    if done is not None:
        render.out.print(f"VM {vm}: {done.detail}", markup=False)


@snapshot_app.command("delete")
def delete_cmd(vm: Vm, snap: Snap, dry_run: DryRun = False, detach: Detach = False) -> None:
    """Delete a snapshot, also while the VM runs: its layer is merged into every layer built
    on it (see --dry-run)."""
    from corral.cli.main import _finish

    with open_client() as api:
        if dry_run:
            _steps(api.delete_plan(vm, snap).steps)
            return
        done = _finish(api, api.delete_snapshot(vm, snap), detach)
    if done is not None:
        render.out.print(f"VM {vm}: {done.detail}", markup=False)
