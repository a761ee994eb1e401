"""``vilearn evaluate``: score a trained run on held-out views (thin wrapper over vilearn.bench)."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail


def parse_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{option} {text!r}: expected comma-separated integers") from None
    if not values:
        raise fail(f"{option} {text!r}: give at least one value")
    if min(values) < 0:
        raise fail(f"{option} {text!r}: values must be >= 0")
    return values


def ticker(bar, task):
    """``on_item`` for a progress bar: one step per view, the skipped ones counted in red."""
    skipped = 0

    def tick(outcome: str) -> None:
        nonlocal skipped
        skipped += outcome == "skipped"
        bar.update(task, advance=1, failed=skipped)
    return tick


@app.command("evaluate")
def evaluate_command(
    run: Path = typer.Argument(..., help="A training run (or checkpoint) folder."),
    split: str = typer.Option("val", "--split", help="Held-out split of the run's dataset."),
    n: int = typer.Option(200, "--n", min=1, help="Held-out (shape, view) pairs."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated sampling seeds."),
    steps: int = typer.Option(25, "--steps", min=1, help="Euler steps."),
    cfg_scale: float = typer.Option(3.0, "--cfg", min=0.0, help="Classifier-free guidance scale."),
    resolution: int = typer.Option(64, "--resolution", min=8, help="Mesh extraction grid."),
    references: bool = typer.Option(True, "--references/--no-references",
                                    help="Also score the VAE ceiling and the chance level."),
    out: Path = typer.Option(None, "--out", "-o", help="Report folder [RUN/eval/step-N]."),
    device: str = typer.Option(None, "--device", help="cpu or cuda [cuda when there is one]."),
) -> None:
    """Generate for held-out views with fixed seeds, compute every metric, write JSON + Markdown
    (means with 95% intervals) and a PNG of the best and worst cases. A view whose files cannot be
    read is skipped and named; the others are evaluated, and the exit status is then 1."""
    import sys

    from vilearn.bench.data import default_device
    from vilearn.bench.evaluate import (
        EvalSettings,
        evaluate_model,
        measure_condition_gap,
        reference_scores,
        write_report,
    )
    from vilearn.cli.progress import print_failures, progress_bar
    from vilearn.engine.checkpoint import step_name
    from vilearn.train.loading import load_trained, run_vae

    settings = EvalSettings(split=split, n=n, seeds=parse_ints(seeds, "--seeds"), steps=steps,
                            cfg_scale=cfg_scale, resolution=resolution)
    try:
        trained = load_trained(run, device=device or default_device())
        vae, identity = run_vae(trained, device=device or default_device())
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from error
    out = out or Path(run) / "eval" / step_name(trained.step)
    results = {}
    with progress_bar() as bar:
        total = n * len(settings.seeds)
        task = bar.add_task("evaluate", total=total, failed=0, rate="")
        try:
            results["model"] = evaluate_model(trained, vae, settings, on_item=ticker(bar, task))
        except ValueError as error:
            raise fail(str(error)) from error
        if references:
            for mode in ("ceiling", "chance"):
                task = bar.add_task(mode, total=n, failed=0, rate="")
                results[mode] = reference_scores(
                    trained.config.dataset, vae, identity.key, trained.tokens,
                    mode, settings, on_item=ticker(bar, task))
    gap = measure_condition_gap(trained, views=min(n, 64), split=split)
    report = write_report(out, results, f"Evaluation of {run} at step {trained.step}",
                          "vilearn " + " ".join(sys.argv[1:]), grid=("model", trained.config.dataset),
                          condition_gap=gap)
    console.print(gap["verdict"])
    for name, result in results.items():
        if result.skipped:
            console.print(f"[red]{name}: {len(result.skipped)} held-out view(s) skipped[/] "
                          f"(unreadable files; scored {len(result.rows)} item(s)):")
            print_failures(result.skipped, where=str(out / "eval.json"))
    console.print(f"report: {report}")
    if any(result.skipped for result in results.values()):
        raise typer.Exit(1)
