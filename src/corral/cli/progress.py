"""Progress bars for long work (conversions, the guest build)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from corral.cli.render import err


@contextmanager
def phases(description: str) -> Iterator[Callable[[str, float], None]]:
    """A progress bar on stderr whose label follows named phases; it vanishes when done.

    Yields ``update(phase, fraction)`` with ``fraction`` in 0..1.
    """
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=1.0)

        def update(phase: str, fraction: float) -> None:
            label = f"{description}: {phase}" if phase else description
            progress.update(task, description=label, completed=max(0.0, min(1.0, fraction)))

        yield update


@contextmanager
def bar(description: str) -> Iterator[Callable[[float], None]]:
    """A plain progress bar; yields ``update(fraction)``."""
    with phases(description) as update:
        yield lambda fraction: update("", fraction)
