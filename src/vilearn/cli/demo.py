"""``vilearn demo``: the main job on the embedded data (pybullet's random_urdfs), end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the dataset and report."),
    shapes: int = typer.Option(48, "--shapes", help="How many random_urdfs assets to prepare."),
    workers: int = typer.Option(0, "--workers", "-w", help="Worker processes (0 = all cores)."),
) -> None:
    """Prepare a subset of the embedded random_urdfs meshes and write a contact sheet of the views."""
    import os
    import time

    from vilearn.cli.progress import progress_bar, rate_text
    from vilearn.config import ConfigError, load_config
    from vilearn.data.dataset import PreparedDataset
    from vilearn.data.inspect import contact_sheet
    from vilearn.data.prepare import PrepareConfig, prepare_dataset

    try:
        config = load_config(PrepareConfig, "prepare-demo")
    except ConfigError as error:
        raise fail(str(error)) from error
    dataset = out / "dataset"
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("1/2 prepare", total=shapes, failed=0, rate="")

        def update(result, summary):
            done = summary.ok + summary.failed
            bar.update(task, completed=done, failed=summary.failed,
                       rate=rate_text(done - summary.skipped, time.perf_counter() - start, "shapes"))

        summary = prepare_dataset("pybullet:random_urdfs", dataset, config,
                                  workers=workers or os.cpu_count() or 1, limit=shapes, progress=update)
    if summary.ok == 0:
        raise fail("no shape could be prepared", code=1)
    console.print("[bold]2/2 report")
    report = out / "report"
    sheet = contact_sheet(PreparedDataset(dataset), report / "views.png", count=24)
    console.print(f"{summary.ok} shapes prepared ({summary.failed} failed) in {dataset}")
    console.print(f"report: {report.resolve()}  (contact sheet {sheet.name})")
