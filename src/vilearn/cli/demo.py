"""``vilearn demo``: the main job end to end (real furniture when installed, else random_urdfs)."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console


def bar_reporter(bars):
    """The demo's ``Reporter`` on rich progress bars: one bar per step, with its failure count."""
    from vilearn.demo import Reporter

    class Bars(Reporter):
        def say(self, text: str) -> None:
            bars.console.print(f"[bold]{text}")

        def track(self, name: str, total: int):
            task = bars.add_task(name, total=total, failed=0, rate="")
            return lambda done, failed=0: bars.update(task, completed=done, failed=failed)

    return Bars()


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for data, runs and report."),
    source: str = typer.Option("auto", "--source", help="auto (the Sweet Home 3D furniture when "
                               "installed, else pybullet:random_urdfs) or any prepare source."),
    shapes: int = typer.Option(300, "--shapes", min=1, help="How many assets to prepare."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Training steps of each MM-DiT variant."),
    samples: int = typer.Option(8, "--samples", min=0, help="Held-out views to draw meshes for."),
    eval_views: int = typer.Option(32, "--eval-views", min=1,
                                   help="Held-out views scored against chance and ceiling."),
    vae: str = typer.Option(None, "--vae", help="A VAE to use instead of the packaged one."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes (0 = all cores)."),
) -> None:
    """prepare -> view frame -> encode + group -> train va-rope and none -> score -> report."""
    from vilearn.cli.progress import progress_bar
    from vilearn.demo import DemoSettings, run_demo

    settings = DemoSettings(source=source, shapes=shapes, steps=steps, samples=samples,
                            eval_views=eval_views, workers=workers, vae=vae)
    with progress_bar() as bars:
        report = run_demo(out, settings, bar_reporter(bars))
    console.print(f"report: {report.resolve() / 'index.md'}")
