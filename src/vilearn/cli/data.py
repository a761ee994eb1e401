"""``vilearn prepare`` and ``vilearn inspect``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from vilearn.cli.app import app, console, fail, parse_shard, shard_option


@app.command()
def prepare(
    source: str = typer.Argument(..., help="A mesh folder (recursive) or pybullet:random_urdfs."),
    out: Path = typer.Argument(..., help="The dataset folder to write (created; resumed if it exists)."),
    overrides: list[str] = typer.Argument(None, help="PrepareConfig overrides: key.sub=value ..."),
    views: int = typer.Option(None, "--views", "-v", min=0,
                              help="Condition views per shape (default: config)."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes (0 = all cores)."),
    limit: int = typer.Option(None, "--limit", "-k", min=1, help="Only the first K assets (sorted by path)."),
    config: str = typer.Option(None, "--config", "-c", help="PrepareConfig YAML file or packaged name."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any shape failed."),
    time_limit: float = typer.Option(None, "--time-limit", min=0.0,
                                     help="Seconds one shape may take before it is stopped and recorded "
                                          "as failed (0: none) [config's time_limit_s: 600]."),
    shard: str = shard_option(),
    set_: list[str] = typer.Option([], "--set", help="Another spelling of an override: --set key=value."),
) -> None:
    """Meshes -> normalised shapes (surface, occupancy) and rendered views (image, depth, visible points).

    With --shard K/N only shard K's shapes are done and their rows go to
    OUT/manifest.d/shard-K-of-N.jsonl; 'vilearn merge-shards OUT' then builds the manifest."""
    import os

    from vilearn.cli.progress import print_failures, progress_bar, rate_text
    from vilearn.config import ConfigError, load_config
    from vilearn.data.prepare import PrepareConfig, prepare_dataset

    part = parse_shard(shard)
    overrides = [*(overrides or []), *set_, *([f"views.count={views}"] if views is not None else [])]
    if time_limit is not None:
        overrides.append(f"time_limit_s={time_limit}")
    try:
        cfg = load_config(PrepareConfig, config, overrides)
    except ConfigError as error:
        raise fail(str(error)) from error
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("prepare", total=None, failed=0, rate="")

        def update(result, summary):
            done = summary.ok + summary.failed
            fresh = done - summary.skipped
            bar.update(
                task, total=summary.total, completed=done, failed=summary.failed,
                rate=rate_text(fresh, time.perf_counter() - start, "shapes"),
            )

        try:
            summary = prepare_dataset(source, out, cfg, workers=workers, limit=limit, progress=update,
                                      shard=part)
        except (ConfigError, FileNotFoundError) as error:
            raise fail(str(error)) from error
    console.print(
        f"[green]{summary.ok} ok[/], [red]{summary.failed} failed[/] of {summary.total} "
        f"({summary.skipped} already done) in {summary.seconds:.1f} s -> {out}"
        + (f" (shard {part}; merge with 'vilearn merge-shards {out}')" if part else "")
    )
    for reason, count in sorted(summary.reasons.items(), key=lambda item: -item[1]):
        console.print(f"  failed: {count} x {reason}")
    manifest = out / "manifest.jsonl" if part is None else out / "manifest.d" / f"{part.name}.jsonl"
    print_failures(summary.failures, where=str(manifest))
    if summary.ok == 0:
        raise typer.Exit(1)
    if strict and summary.failed:
        raise typer.Exit(1)


@app.command("merge-shards")
def merge_shards(
    dataset: Path = typer.Argument(..., help="A dataset prepared as N shards (prepare --shard K/N)."),
) -> None:
    """Build DATASET/manifest.jsonl from the N shards' parts (DATASET/manifest.d/); refuses while a
    shard's part is missing. Run it again whenever shards are redone."""
    from vilearn.data.shards import merge_manifests

    try:
        count, rows = merge_manifests(dataset)
    except ValueError as error:
        raise fail(str(error)) from error
    console.print(f"{rows} shapes from {count} shards -> {dataset / 'manifest.jsonl'}")


@app.command()
def inspect(
    dataset: Path = typer.Argument(..., help="A prepared dataset folder."),
    sheet: Path = typer.Option(None, "--sheet", help="Contact sheet PNG [DATASET/contact_sheet.png]."),
    count: int = typer.Option(24, "--count", min=1, help="Views on the contact sheet."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    verify: bool = typer.Option(False, "--verify",
                                help="Read every file of every shape and list those that cannot be read."),
) -> None:
    """Counts, failure reasons, point and view statistics, and a contact sheet of the views.
    Exit status 1 when a file cannot be read (each is listed with the problem)."""
    from dataclasses import asdict

    from vilearn.cli.progress import print_failures, progress_bar
    from vilearn.data.dataset import PreparedDataset
    from vilearn.data.inspect import contact_sheet, dataset_stats, unreadable_files

    try:
        data = PreparedDataset(dataset)
    except FileNotFoundError as error:
        raise fail(str(error)) from error
    stats = dataset_stats(data)
    if as_json:
        print(json.dumps(asdict(stats), indent=1))
    else:
        table = Table(title=f"{dataset}", show_header=False)
        table.add_row("shapes", f"{stats.shapes} ({stats.ok} ok, {stats.failed} failed)")
        table.add_row("splits", ", ".join(f"{k}: {v}" for k, v in sorted(stats.splits.items())))
        table.add_row("views", str(stats.views))
        for name, described in [("faces", stats.faces), ("inside fraction (uniform)", stats.inside_fraction),
                                ("visible points per view", stats.visible_count)]:
            if described:
                table.add_row(name, "mean {mean:.4g}  median {median:.4g}  p5 {p5:.4g}  p95 {p95:.4g}  "
                              "min {min:.4g}  max {max:.4g}".format(**described))
        for reason, n in sorted(stats.reasons.items(), key=lambda item: -item[1]):
            table.add_row("failed", f"{n} x {reason}")
        table.add_row("made watertight", str(stats.watertight))
        table.add_row("with loading warnings", str(stats.with_warnings))
        for license, n in sorted(stats.licenses.items(), key=lambda item: -item[1]):
            table.add_row("licence", f"{n} x {license}")
        console.print(table)
        if stats.attributions:
            console.print(f"Attribution required ({sum(1 for _ in stats.attributions)} creators;"
                          f" per model in {Path(dataset) / 'CREDITS'}):")
            for line in stats.attributions:
                console.print(f"  {line}", markup=False, highlight=False)
    unreadable: dict[str, str] = {}
    if stats.ok:
        try:
            path = contact_sheet(data, sheet or Path(dataset) / "contact_sheet.png", count=count,
                                 unreadable=unreadable)
            console.print(f"contact sheet: {path}")
        except ValueError as error:  # no readable view at all
            console.print(f"no contact sheet: {error}")
    if verify:
        with progress_bar() as bar:
            task = bar.add_task("verify", total=stats.ok, failed=0, rate="")
            unreadable.update(unreadable_files(data, on_shape=lambda _: bar.advance(task)))
    if unreadable:
        console.print(f"[red]{len(unreadable)} unreadable file(s)[/]:")
        print_failures(unreadable)
        raise typer.Exit(1)


@app.command("view-frame")
def view_frame(
    dataset: Path = typer.Argument(..., help="A prepared (object-frame) dataset folder."),
    out: Path = typer.Argument(..., help="The view-frame dataset to write (resumed if it exists)."),
) -> None:
    """One shape per (shape, view), rotated into that view's camera frame (docs/design.md, "Frames")."""
    from vilearn.cli.progress import progress_bar
    from vilearn.data.dataset import PreparedDataset
    from vilearn.data.view_frame import derive_view_frame

    try:
        total = sum(1 for _ in PreparedDataset(dataset).rows(status=None))
    except FileNotFoundError as error:
        raise fail(str(error)) from error
    with progress_bar() as bar:
        task = bar.add_task("view frame", total=total, failed=0, rate="")
        try:
            count = derive_view_frame(dataset, out, on_shape=lambda _: bar.advance(task))
        except (FileNotFoundError, ValueError) as error:
            raise fail(str(error)) from error
    console.print(f"[green]{count}[/] view-frame shapes -> {out}")
