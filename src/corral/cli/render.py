"""Output helpers: Rich tables for people, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.units import format_size

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

_STATE_STYLE = {
    "running": "green",
    "paused": "yellow",
    "starting": "cyan",
    "stopping": "cyan",
    "crashed": "bold red",
    "shutoff": "dim",
    "defined": "dim",
}


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def state_text(state: str) -> str:
    style = _STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/]" if style else state


def size(nbytes: int | None) -> str:
    return "-" if nbytes is None else format_size(nbytes)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A simple table; numeric-looking columns are right-aligned by the caller's choice."""
    tbl = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        justify = (
            "right"
            if column.endswith(("CPUs", "Memory", "Space", "CPU", "MiB", "Size"))
            else "left"
        )
        tbl.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        tbl.add_row(*row)
    out.print(tbl)


def fields(pairs: Iterable[tuple[str, str]]) -> None:
    """``Key: value`` lines, like ``virsh dominfo``."""
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0) + 1
    for key, value in items:
        out.print(f"{key + ':':<{width}} {value}", soft_wrap=True)
