"""``vilearn group`` and ``vilearn show-groups``: thin wrappers over ``vilearn.grouping``."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail, parse_shard, shard_option


@app.command("group")
def group_command(
    dataset: Path = typer.Argument(..., help="Prepared and encoded dataset folder."),
    vae: Path = typer.Option(..., "--vae", help="Training run, checkpoint or VAE weights (as for encode)."),
    tokens: str = typer.Option(None, "--tokens", help="Token counts, e.g. 256,1024 [every encoded count]."),
    name: str = typer.Option(None, "--name", help="Readable latents name, as given to encode."),
    max_mb: int = typer.Option(None, "--max-mb", min=1,
                               help="Memory budget of one attention chunk, MiB [16 on CPU, 1024 on CUDA]."),
    device: str = typer.Option("cpu", "--device"),
    report: bool = typer.Option(False, "--report",
                                help="Also measure locality (VST/IST-only geometry vs the camera)."),
    report_shapes: int = typer.Option(8, "--report-shapes", min=1, help="Shapes in the locality report."),
    report_views: int = typer.Option(2, "--report-views", min=1, help="Views per shape in the report."),
    report_resolution: int = typer.Option(64, "--report-resolution", min=8,
                                          help="Decoding grid of the report."),
    shard: str = shard_option(),
) -> None:
    """Visibility Grouping: the VST of every view and token count, stored next to the latents;
    resumable. Writes groups/<id>.npz, groups/stats.json and groups/stats.png per token count.

    With --shard K/N only shard K's shapes are grouped and the statistics are left out: run once
    more without --shard after every shard finished (it skips what is done)."""

    from vilearn.cli.progress import ShapeTicker, print_failures, progress_bar
    from vilearn.cli.vae import _parse_tokens
    from vilearn.data.dataset import PreparedDataset
    from vilearn.grouping.run import group_dataset, token_counts
    from vilearn.grouping.stats import write_stats
    from vilearn.grouping.store import groups_dir
    from vilearn.vae.identity import find_latents, load_identified

    part = parse_shard(shard)
    if part is not None and report:
        raise fail("--report reads every shape: run it without --shard once every shard has finished")
    try:
        ids = [i for i in PreparedDataset(dataset).ids() if part is None or part.owns(i)]
        model, identity = load_identified(vae, name, device)
        find_latents(dataset, identity)
        label = identity.key
        counts = _parse_tokens(tokens) if tokens else token_counts(dataset, label)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise fail(str(error)) from error
    with progress_bar() as bar:
        tick = ShapeTicker(bar, bar.add_task(f"group ({label})", total=len(ids) * len(counts), failed=0,
                                             rate=""), fresh="grouped")
        try:
            budget = max_mb * 2**20 if max_mb else None
            summary = group_dataset(dataset, model, identity, counts, max_bytes=budget, shard=part,
                                    on_shape=lambda shape_id, n, outcome: tick(outcome))
        except (FileNotFoundError, ValueError) as error:
            raise fail(str(error)) from error
    print_failures(summary.failed)
    for n in counts if part is None else []:
        try:
            stats = write_stats(groups_dir(dataset, label, n), ids)
        except ValueError as error:
            console.print(f"N={n}: {error}")
            continue
        frac = stats["visible_fraction"]
        console.print(f"N={n}: {stats['shapes']} shapes, {stats['views']} views "
                      f"({stats['empty_views']} without visible points); visible fraction "
                      f"mean {frac['mean']:.3f} std {frac['std']:.3f} p5 {frac['p5']:.3f} "
                      f"p95 {frac['p95']:.3f}; points per VST token median "
                      f"{stats['points_per_vst_token']['p50']:.0f} -> {groups_dir(dataset, label, n)}")
    console.print(f"{summary.grouped} grouped, {summary.skipped} already done, "
                  f"{len(summary.failed)} failed"
                  + (f" (shard {part}; statistics: run again without --shard at the end)" if part else ""))
    if report:
        _report(dataset, model, label, counts, report_shapes, report_views, report_resolution)
    if summary.failed:
        raise typer.Exit(1)


def _report(dataset: Path, model, label: str, counts: list[int], shapes: int, views: int,
            resolution: int) -> None:
    from vilearn.grouping.locality import locality_report
    from vilearn.grouping.store import groups_dir
    from vilearn.io import write_json

    for n in counts:
        report = locality_report(dataset, model, label, n, shapes, views, resolution)
        path = groups_dir(dataset, label, n) / "locality.json"
        write_json(path, report)
        m = report["means"]
        console.print(
            f"locality N={n} ({report['views']} views of {report['shapes']} shapes): visible fraction of "
            f"VST-only surface {m['vst_visible']:.3f}, IST-only {m['ist_visible']:.3f}, full "
            f"{m['full_visible']:.3f}; anchors VST {m['vst_anchor_visible']:.3f}, IST "
            f"{m['ist_anchor_visible']:.3f}; {len(report['undecodable_views'])} views skipped "
            f"(no decoded surface) -> {path}")


@app.command("show-groups")
def show_groups_command(
    dataset: Path = typer.Argument(..., help="Prepared and encoded dataset folder."),
    shape_id: str = typer.Option(..., "--id", help="Shape id."),
    view: int = typer.Option(0, "--view", min=0, help="View index."),
    vae: Path = typer.Option(..., "--vae", help="Training run, checkpoint or VAE weights."),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Token count [the smallest encoded]."),
    name: str = typer.Option(None, "--name", help="Readable latents name, as given to encode."),
    out: Path = typer.Option(None, "--out", "-o", help="PNG [DATASET/groups-ID-vK.png]."),
    resolution: int = typer.Option(96, "--resolution", min=8, help="Decoding grid resolution."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """The paper's Figure 2 for one view: condition image, anchors by group, and the geometry
    decoded from the VST alone and the IST alone, from the condition camera and the far side."""
    from vilearn.data.dataset import PreparedDataset
    from vilearn.grouping.figure import groups_figure
    from vilearn.grouping.run import group_one, token_counts
    from vilearn.grouping.store import groups_path, load_groups
    from vilearn.io import write_png
    from vilearn.vae.encode import latents_dir, read_latents
    from vilearn.vae.identity import find_latents, load_identified

    try:
        model, identity = load_identified(vae, name, device)
        find_latents(dataset, identity)
        label = identity.key
        data = PreparedDataset(dataset)
        row = next((r for r in data.rows() if r["id"] == shape_id), None)
        if row is None:
            raise ValueError(f"--id {shape_id!r}: no usable shape with this id in {dataset}")
        if not 0 <= view < row["views"]:
            raise ValueError(f"--view {view}: shape {shape_id} has views 0..{row['views'] - 1}")
        n = tokens or token_counts(dataset, label)[0]
        latents = read_latents(latents_dir(dataset, label, n) / f"{shape_id}.safetensors")
        if groups_path(dataset, label, n, shape_id).is_file():
            groups = load_groups(dataset, label, n, shape_id)
        else:
            console.print("no stored grouping for this shape: computing it")
            groups = group_one(model, data, label, n, shape_id, row["views"])
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise fail(str(error)) from error
    figure = groups_figure(model, latents, groups.visible[view], data.camera(shape_id, view),
                           data.image(shape_id, view), f"{shape_id}/{view} N={n}", resolution)
    out = out or dataset / f"groups-{shape_id}-v{view}.png"
    write_png(out, figure)
    console.print(f"{out}: VST {int(groups.visible[view].sum())} of {n} tokens "
                  f"({int(groups.visible_points[view])} visible points)")
