"""Progress bars for long work, and one-line notes, on stderr.

Bars are drawn with rich when stderr is a terminal; otherwise (CI, logs, Kubernetes)
each task prints a start and an end line so a log still shows where the time went.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Logs (CI, pods) get a fixed width wide enough for the summary table.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)


def note(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


@contextlib.contextmanager
def task(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(k)``; show a bar (terminal) or start/end lines (logs)."""
    start = time.time()
    if console.is_terminal and total > 0:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as bar:
            tid = bar.add_task(description, total=total)

            def step(k: int = 1) -> None:
                bar.advance(tid, k)

            yield step
        return
    done = [0]

    def advance(k: int = 1) -> None:
        done[0] += k

    console.print(f"{description}: {total} ...")
    yield advance
    console.print(f"{description}: {done[0]}/{total} done in {time.time() - start:.1f}s")
