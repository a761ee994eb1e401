"""Rich progress bars with rate, ETA and a failure count, shared by long-running commands."""

from __future__ import annotations

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


def rate_text(done: int, seconds: float, unit: str) -> str:
    return f"{done / seconds:.2f} {unit}/s" if seconds > 0 and done else f"- {unit}/s"
