"""Rich progress bars with rate, ETA and a failure count, shared by long-running commands."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vilearn.cli.app import console


def progress_bar() -> Progress:
    """A bar showing done/total, items per second, elapsed, ETA and ``failed`` from task fields."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        console=console,
    )


def print_failures(failed: dict[str, str], limit: int = 10, where: str | None = None) -> None:
    """The first ``limit`` failures, one line each (``key: reason``), and how many more."""
    for key, reason in list(failed.items())[:limit]:
        console.print(f"  [red]failed[/]: {key}: {reason}")
    if len(failed) > limit:
        console.print(f"  ... and {len(failed) - limit} more" + (f" (all in {where})" if where else ""))


def rate_text(done: int, seconds: float, unit: str) -> str:
    return f"{done / seconds:.2f} {unit}/s" if seconds > 0 and done else f"- {unit}/s"


class ShapeTicker:
    """One bar step per finished shape: counts the shapes that did new work (``fresh``: the rate)
    and those that failed (``"failed"``: the red count). Call with the shape's outcome."""

    def __init__(self, bar: Progress, task, fresh: str):
        self.bar, self.task, self.fresh_outcome = bar, task, fresh
        self.start, self.fresh, self.failed = time.perf_counter(), 0, 0

    def __call__(self, outcome: str) -> None:
        self.fresh += outcome == self.fresh_outcome
        self.failed += outcome == "failed"
        self.bar.update(self.task, advance=1, failed=self.failed,
                        rate=rate_text(self.fresh, time.perf_counter() - self.start, "shapes"))
