"""``vilearn demo``: the main job on the embedded data (pybullet's random_urdfs), end to end."""

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
    shapes: int = typer.Option(300, "--shapes", min=1, help="How many random_urdfs assets to prepare."),
    steps: int = typer.Option(400, "--steps", min=1, help="Training steps of each MM-DiT variant."),
    samples: int = typer.Option(8, "--samples", min=0, help="Held-out views to generate meshes for."),
    vae: str = typer.Option(None, "--vae", help="A VAE to use instead of the packaged tiny one."),
    workers: int = typer.Option(0, "--workers", "-w", min=0, help="Worker processes (0 = all cores)."),
) -> None:
    """prepare -> VAE -> encode + group -> train va-rope and none -> generate -> report."""
    from vilearn.cli.progress import progress_bar
    from vilearn.demo import DemoSettings, run_demo

    settings = DemoSettings(shapes=shapes, steps=steps, samples=samples, workers=workers, vae=vae)
    with progress_bar() as bars:
        report = run_demo(out, settings, bar_reporter(bars))
    console.print(f"report: {report.resolve() / 'index.md'}")
