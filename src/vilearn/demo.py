"""``vilearn demo``: the whole pipeline on the embedded random_urdfs meshes, on one CPU.

prepare a subset -> the tiny VAE (the packaged checkpoint, or trained here) -> encode and
group -> train the tiny MM-DiT twice (``va-rope`` and the ``none`` baseline, same data order
and seeds) -> generate meshes for held-out condition images -> a report folder::

    OUT/report/index.md            summary: settings, timings, final held-out losses
    OUT/report/curves.png          held-out flow loss of both runs on one plot
    OUT/report/samples.png         condition | va-rope | none | ground truth, per held-out view
    OUT/report/meshes/<id>-<k>-<variant>.glb   the generated meshes
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("va-rope", "none")


@dataclass
class DemoSettings:
    shapes: int = 300
    tokens: int = 64
    steps: int = 400
    samples: int = 8
    workers: int = 0
    vae: str | None = None  # None: the packaged checkpoint, else train one
    train_vae_steps: int = 1500
    timings: dict[str, float] = field(default_factory=dict)


class Reporter:
    """How the demo shows progress: ``say`` a line, ``track`` a step with a known length
    (returns a function taking the number of items done and, optionally, how many of them
    failed). The CLI draws rich progress bars."""

    def say(self, text: str) -> None:
        print(text)

    def track(self, name: str, total: int) -> Callable[..., None]:
        return lambda done, failed=0: None


def run_demo(out: str | Path, settings: DemoSettings, reporter: Reporter | None = None) -> Path:
    """Run every step (each resumes if its output exists) and return the report folder."""
    import os

    import torch

    from vilearn.bench.data import build_dataset
    from vilearn.config import load_config
    from vilearn.data.prepare import PrepareConfig, prepare_dataset

    # One torch thread: the data-loader worker uses the other core, and two busy processes
    # each running two OpenMP threads on two cores run several times slower (measured).
    torch.set_num_threads(1)
    reporter = reporter or Reporter()
    say = reporter.say
    out = Path(out)
    dataset = out / "dataset"
    clock = time.perf_counter()
    say(f"1/5 prepare {settings.shapes} random_urdfs shapes -> {dataset}")
    tick = reporter.track("prepare", settings.shapes)
    prepared = prepare_dataset("pybullet:random_urdfs", dataset, load_config(PrepareConfig, "prepare-demo"),
                               workers=settings.workers or os.cpu_count() or 1, limit=settings.shapes,
                               progress=lambda result, summary: tick(summary.ok + summary.failed,
                                                                     summary.failed))
    settings.timings["prepare"] = time.perf_counter() - clock

    clock = time.perf_counter()
    vae_path = _vae(out, dataset, settings, say)
    settings.timings["vae"] = time.perf_counter() - clock

    clock = time.perf_counter()
    say(f"3/5 encode and group at {settings.tokens} tokens")
    ticks = reporter.track("encode + group", 2 * prepared.ok)
    counts = {"done": 0, "failed": 0}

    def on_shape(*args) -> None:  # (id, outcome) from encode, (id, N, outcome) from group
        counts["done"] += 1
        counts["failed"] += args[-1] == "failed"
        ticks(counts["done"], counts["failed"])

    vae, identity = build_dataset(dataset, "pybullet:random_urdfs", settings.shapes, "prepare-demo",
                                  vae_path, "demo-vae", [settings.tokens], settings.workers,
                                  say=lambda text: say(f"    {text}") if "failed" in text else None,
                                  on_shape=on_shape)
    settings.timings["encode+group"] = time.perf_counter() - clock

    runs = {}
    for variant in VARIANTS:
        clock = time.perf_counter()
        say(f"4/5 train the tiny MM-DiT with vape={variant} ({settings.steps} steps)")
        runs[variant] = _train(out, dataset, vae_path, identity.key, vae.config.embed_dim, variant,
                               settings, reporter)
        settings.timings[f"train {variant}"] = time.perf_counter() - clock

    clock = time.perf_counter()
    say("5/5 generate meshes for held-out views and write the report")
    report = _report(out, dataset, vae, runs, settings, reporter.track("generate", settings.samples))
    settings.timings["report"] = time.perf_counter() - clock
    _summary(report, runs, settings)
    return report


def _vae(out: Path, dataset: Path, settings: DemoSettings, say: Callable[[str], None]) -> Path:
    if settings.vae:
        say(f"2/5 VAE: {settings.vae}")
        return Path(settings.vae)
    from vilearn.bench.data import PACKAGED_VAE

    if PACKAGED_VAE.is_file():
        say(f"2/5 VAE: the packaged tiny VAE ({PACKAGED_VAE})")
        return PACKAGED_VAE
    from vilearn.config import load_config
    from vilearn.vae.train import train_vae
    from vilearn.vae.train_config import TrainVAEConfig

    say(f"2/5 train the tiny VAE ({settings.train_vae_steps} steps)")
    config = load_config(TrainVAEConfig, "vae-tiny", [f"train.steps={settings.train_vae_steps}"])
    train_vae(dataset, config, out / "vae")
    return out / "vae"


def _train(out: Path, dataset: Path, vae_path: Path, key: str, channels: int, variant: str,
           settings: DemoSettings, reporter: Reporter) -> Path:
    from vilearn.config import load_config
    from vilearn.engine.checkpoint import CheckpointError, latest_checkpoint, read_meta
    from vilearn.grouping import measured_visible_ratio
    from vilearn.train.config import TrainConfig
    from vilearn.train.trainer import train

    run = out / "runs" / f"dit-{variant}"
    ratio = measured_visible_ratio(dataset, key, settings.tokens)
    config = load_config(TrainConfig, "dit-tiny", [
        f"dataset={dataset}", f"vae={vae_path}", "vae_name=demo-vae", f"model.vape={variant}",
        f"model.in_channels={channels}",  # the DiT predicts the VAE's latents
        f"model.visible_ratio={ratio}",  # the inference partition follows our measured fraction
        "train.workers=1",  # one process loads and prepares images while the other core trains
        f"stages=[{{tokens: {settings.tokens}, steps: {settings.steps}, batch_size: 16}}]",
    ])
    checkpoint = latest_checkpoint(run / "checkpoints")
    try:
        done = read_meta(checkpoint)["step"] if checkpoint is not None else 0
    except CheckpointError:  # damaged: the trainer falls back to an intact one, with a warning
        done = 0
    if done < settings.steps:
        tick = reporter.track(f"train {variant}", settings.steps)

        def show(record: dict) -> None:
            if record.get("split") == "val":
                loss = record.get("loss", float("nan"))
                reporter.say(f"    step {record['step']}: held-out loss {loss:.4f}")
            else:
                tick(record["step"])

        train(config, run, resume="latest", on_log=show)
    return run


def _report(out: Path, dataset: Path, vae, runs: dict[str, Path], settings: DemoSettings,
            tick: Callable[[int], None]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vilearn.data.dataset import PreparedDataset
    from vilearn.data.preview import both_sides, opposite_camera, render_mesh, write_grid
    from vilearn.flow.pipeline import generate_latents
    from vilearn.train.data import condition_image
    from vilearn.train.loading import load_trained
    from vilearn.train.validation import generated_mesh
    from vilearn.vae.surface import export_mesh

    report = out / "report"
    (report / "meshes").mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    for variant, run in runs.items():
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        val = [(r["step"], r["loss_fixed"] if "loss_fixed" in r else r["loss"]) for r in rows
               if r.get("split") == "val" and "loss" in r]
        if val:
            axis.plot(*zip(*val), marker="o", label=f"{variant} (fixed partition)")
        true = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val" and "loss_fixed" in r]
        if true:
            axis.plot(*zip(*true), linestyle="--", label=f"{variant} (true VST)")
    axis.set_xlabel("step")
    axis.set_ylabel("held-out flow loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(report / "curves.png", dpi=120)
    plt.close(figure)

    data = PreparedDataset(dataset)
    held_out = [(row["id"], 0) for row in data.rows("val")][: settings.samples]
    trained = {variant: load_trained(run) for variant, run in runs.items()}
    rows = []
    for done, (shape_id, view) in enumerate(held_out, 1):
        camera = data.camera(shape_id, view)
        row = [data.image(shape_id, view)]
        for variant, model in trained.items():
            conditioner = model.model.conditioner
            prepared = condition_image(data, shape_id, view, conditioner.image_size, conditioner.crop)
            latents = generate_latents(model.model.dit, model.model.conditioner, [prepared],
                                       n_tokens=settings.tokens, steps=25, cfg_scale=3.0, seed=0,
                                       stats=model.stats[settings.tokens])
            mesh = generated_mesh(vae, latents[0], resolution=128)
            if len(mesh.faces):
                export_mesh(mesh, report / "meshes" / f"{shape_id}-{view}-{variant}.glb")
            row.extend(both_sides(mesh.verts, mesh.faces, camera))
        truth = data.mesh(shape_id)
        row.append(render_mesh(truth["vertices"], truth["faces"], opposite_camera(camera),
                               truth["face_colors"]))
        rows.append(row)
        tick(done)
    titles = ["condition"] + [f"{v} {side}" for v in trained for side in ("(view)", "(opposite)")]
    if rows:  # a tiny run may have no held-out shape at all
        write_grid(report / "samples.png", rows, titles + ["truth (opposite)"])
    return report


def _summary(report: Path, runs: dict[str, Path], settings: DemoSettings) -> None:
    from vilearn.io import write_text

    lines = ["# ViLearn demo", "", f"{settings.shapes} random_urdfs shapes, {settings.tokens} tokens, "
             f"{settings.steps} training steps per variant (same data order and seeds).", "",
             "| variant | final held-out loss (fixed partition) | with the true VST |", "| --- | --- | --- |"]
    for variant, run in runs.items():
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        val = [r for r in rows if r.get("split") == "val" and "loss" in r]
        last = val[-1] if val else {}
        fixed = last.get("loss_fixed", last.get("loss", float("nan")))
        lines.append(f"| {variant} | {fixed:.4f} | {last.get('loss', float('nan')):.4f} |")
    timings = ", ".join(f"{k} {v:.0f}" for k, v in settings.timings.items())
    lines += ["", f"Wall time per stage (seconds, this machine): {timings}",
              "", "![curves](curves.png)", "", "![samples](samples.png)", "",
              "The held-out loss with the true VST uses information the baseline does not have; the "
              "fixed-partition loss and the generated meshes are what inference sees. At this size "
              "one CPU run is a smoke test of the pipeline, not a measurement of the speed-up "
              "(see `vilearn bench convergence`)."]
    write_text(report / "index.md", "\n".join(lines) + "\n")
