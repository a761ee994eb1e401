"""``vilearn bench convergence``: the convergence benchmark (thin wrapper over vilearn.bench)."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail

bench_app = typer.Typer(help="Benchmarks that measure ViLearn's claims.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("convergence")
def convergence_command(
    config: str = typer.Option("bench-cpu", "--config", "-c", help="BenchConfig YAML or packaged name."),
    out: Path = typer.Option(Path("runs/bench-convergence"), "--out", "-o", help="Benchmark folder."),
    overrides: list[str] = typer.Argument(None, help="BenchConfig overrides: key.sub=value ..."),
    set_: list[str] = typer.Option([], "--set", help="Another spelling of an override: --set key=value."),
    report_only: bool = typer.Option(False, "--report-only", help="Only redraw the report from results."),
) -> None:
    """Train none / va-rope / va-lpe / rope / va-rope-random on identical data and seeds, evaluate
    them at the same checkpoints as at inference, and report curves and speed-ups over none."""
    from vilearn.bench.convergence import BenchConfig, run_benchmark, write_report
    from vilearn.config import ConfigError, load_config

    try:
        bench = load_config(BenchConfig, config, [*(overrides or []), *set_])
    except ConfigError as error:
        raise fail(str(error)) from error
    try:
        if report_only:
            path = write_report(out, bench)
        else:
            path = run_benchmark(bench, out, say=lambda text: console.print(f"[bold]{text}"))
    except (ConfigError, FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from error
    console.print(f"report: {path}")
