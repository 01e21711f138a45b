"""Output helpers: Rich tables for people, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from corral.units import format_size

if TYPE_CHECKING:
    from rich.console import Console

#: Rich consoles for stdout and stderr, made on first use by :func:`__getattr__`: a command
#: that prints only JSON never imports Rich.
out: Console
err: Console


def __getattr__(name: str) -> Console:
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    stream = sys.stderr if name == "err" else sys.stdout
    # Piped output is not cut to 80 columns: it goes to files and grep, not to a screen.
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    console = Console(stderr=name == "err", highlight=False, width=width)
    globals()[name] = console
    return console


def _out() -> Console:
    """``out`` from inside this module (a module's ``__getattr__`` serves only other modules)."""
    console = globals().get("out")
    return console if console is not None else __getattr__("out")


#: Columns of free text that may wrap; the others keep their width.
_WRAPPING = frozenset({"Detail", "OS", "File"})

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
    from rich import box
    from rich.table import Table

    tbl = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    for column in columns:
        justify = (
            "right"
            if column.endswith(("CPUs", "Memory", "Provisioned", "Used", "CPU", "Mem", "Size"))
            else "left"
        )
        tbl.add_column(column, justify=justify, no_wrap=column not in _WRAPPING)  # type: ignore[arg-type]
    for row in rows:
        tbl.add_row(*row)
    _out().print(tbl)


def fields(pairs: Iterable[tuple[str, str]]) -> None:
    """``Key: value`` lines, like ``virsh dominfo``."""
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0) + 1
    for key, value in items:
        _out().print(f"{key + ':':<{width}} {value}", soft_wrap=True)
