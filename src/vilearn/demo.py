"""``vilearn demo``: the whole pipeline on real objects when the machine has them, on one CPU.

The data: Debian's Sweet Home 3D furniture (``sweethome3d:furniture``, 820 textured everyday
objects) when it is installed, else the 1000 random box assemblies that ship with pybullet
(``pybullet:random_urdfs``). The configuration is the one that makes a model read its image on
a CPU budget (benchmarks/results/convergence-furniture-cpu.md): view-aligned latents (each view
its own shape in its camera's frame, so the image fixes the pose), a frozen ImageNet
EfficientNet-Lite0 for the image tokens (cached once), the tiny MM-DiT.

prepare a subset -> view frame -> the packaged VAE for that data -> encode, group and cache the
image features -> train the tiny MM-DiT twice (``va-rope`` and the ``none`` baseline, same data
order and seeds) -> generate meshes for held-out condition images and score them against chance
and the VAE's ceiling -> a report folder::

    OUT/report/index.md            summary: what was run, sample metrics against chance and
                                   ceiling, the condition gap, what the demo shows and does not
    OUT/report/curves.png          held-out flow loss of both runs on one plot
    OUT/report/samples.png         condition | va-rope | none | ground truth, per held-out view
    OUT/report/metrics.json        the same figures, machine-readable
    OUT/report/meshes/<id>-<variant>.glb   the generated meshes
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("va-rope", "none")
FURNITURE, URDFS = "sweethome3d:furniture", "pybullet:random_urdfs"
# The packaged VAE for each source (assets/<name>.safetensors)
SOURCE_VAES = {FURNITURE: "vae-tiny-furniture", URDFS: "packaged"}
# Image tokens: a frozen ImageNet EfficientNet-Lite0's map (benchmarks/condition_stages.py)
FEATURES = "stage6"
CONDITIONER = ("{kind: efficientnet-lite0, features: [" + FEATURES + "], image_size: 224, cached: true, "
               "drop_prob: 0.1}")
METRICS = ("fscore@0.05", "iou", "chamfer_l1", "silhouette_iou")


@dataclass
class DemoSettings:
    source: str = "auto"  # auto: the furniture when installed, else random_urdfs
    shapes: int = 300
    tokens: int = 64
    steps: int = 1000
    samples: int = 8
    eval_views: int = 32  # held-out views scored against chance and ceiling per variant
    workers: int = 0
    vae: str | None = None  # None: the packaged VAE for the source
    timings: dict[str, float] = field(default_factory=dict)


def demo_source(source: str) -> str:
    """``auto`` -> the furniture catalogues if Debian's package is installed, else random_urdfs."""
    if source != "auto":
        return source
    from vilearn.data.sweethome3d import find_catalogs

    try:
        find_catalogs("furniture")
    except FileNotFoundError:
        return URDFS
    return FURNITURE


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

    from vilearn.bench.data import build_dataset, cache_condition_features, resolve_vae_path
    from vilearn.config import load_config
    from vilearn.data.prepare import PrepareConfig, prepare_dataset

    # One torch thread: the data-loader worker uses the other core, and two busy processes
    # each running two OpenMP threads on two cores run several times slower (measured).
    torch.set_num_threads(1)
    reporter = reporter or Reporter()
    say = reporter.say
    out = Path(out)
    source = demo_source(settings.source)
    dataset = out / "dataset"
    clock = time.perf_counter()
    say(f"1/5 prepare {settings.shapes} shapes of {source} -> {dataset}-object")
    tick = reporter.track("prepare", settings.shapes)
    prepare = load_config(PrepareConfig, "prepare-demo")
    prepared = prepare_dataset(source, out / "dataset-object", prepare,
                               workers=settings.workers or os.cpu_count() or 1, limit=settings.shapes,
                               progress=lambda result, summary: tick(summary.ok + summary.failed,
                                                                     summary.failed))
    settings.timings["prepare"] = time.perf_counter() - clock

    clock = time.perf_counter()
    vae_path = resolve_vae_path(settings.vae or SOURCE_VAES.get(source, "packaged"))
    say(f"2/5 view frame, then encode and group at {settings.tokens} tokens with {vae_path}")
    on_item = counter(reporter.track("encode + group", 2 * prepare.views.count * prepared.ok))
    vae, identity = build_dataset(dataset, source, settings.shapes, "prepare-demo", vae_path, "demo-vae",
                                  [settings.tokens], settings.workers,
                                  say=lambda text: say(f"    {text}") if "failed" in text else None,
                                  on_shape=lambda *args: on_item(args[-1]),  # outcome last
                                  frame="view")
    configs = _configs(dataset, vae_path, identity.key, vae.config.embed_dim, settings)
    cache_condition_features(configs["none"], say=lambda text: say(f"    {text}"))
    settings.timings["view frame + encode + group + features"] = time.perf_counter() - clock

    runs = {}
    for variant in VARIANTS:
        clock = time.perf_counter()
        say(f"3/5 train the tiny MM-DiT with vape={variant} ({settings.steps} steps)")
        runs[variant] = _train(out / "runs" / f"dit-{variant}", configs[variant], settings, reporter)
        settings.timings[f"train {variant}"] = time.perf_counter() - clock

    clock = time.perf_counter()
    say(f"4/5 generate and score {settings.eval_views} held-out views per variant, chance and ceiling")
    scores = _scores(runs, dataset, vae, identity.key, settings, reporter)
    settings.timings["evaluate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    say("5/5 generate meshes for held-out views and write the report")
    report = _report(out, dataset, vae, runs, settings, reporter.track("generate", settings.samples))
    settings.timings["report"] = time.perf_counter() - clock
    _summary(report, source, runs, scores, settings)
    return report


def _configs(dataset: Path, vae_path: Path, key: str, channels: int, settings: DemoSettings) -> dict:
    """The training config of each variant: dit-tiny on cached EfficientNet-Lite0 tokens."""
    from vilearn.config import load_config
    from vilearn.dit.conditioner import ImageConditioner
    from vilearn.grouping import measured_visible_ratio
    from vilearn.train.config import TrainConfig

    chosen = load_config(TrainConfig, "dit-tiny", [f"conditioner={CONDITIONER}"]).conditioner
    width = ImageConditioner(chosen).out_dim  # the token width the DiT's projection reads
    ratio = measured_visible_ratio(dataset, key, settings.tokens)
    common = [
        f"dataset={dataset}", f"vae={vae_path}", "vae_name=demo-vae",
        f"model.in_channels={channels}",  # the DiT predicts the VAE's latents
        f"model.visible_ratio={ratio}",  # the inference partition follows our measured fraction
        f"conditioner={CONDITIONER}", f"model.context_in_dim={width}",
        "conditioner.crop=false",  # view frame: the framing is the object's size and place
        "train.workers=1",  # one process loads the items while the other core trains
        f"val.every={max(1, settings.steps // 4)}", "val.shapes=32",
        f"stages=[{{tokens: {settings.tokens}, steps: {settings.steps}, batch_size: 16}}]",
    ]
    return {variant: load_config(TrainConfig, "dit-tiny", [*common, f"model.vape={variant}"])
            for variant in VARIANTS}


def _train(run: Path, config, settings: DemoSettings, reporter: Reporter) -> Path:
    from vilearn.engine.checkpoint import CheckpointError, latest_checkpoint, read_meta
    from vilearn.train.trainer import train

    checkpoint = latest_checkpoint(run / "checkpoints")
    try:
        done = read_meta(checkpoint)["step"] if checkpoint is not None else 0
    except CheckpointError:  # damaged: the trainer falls back to an intact one, with a warning
        done = 0
    if done < settings.steps:
        tick = reporter.track(f"train {config.model.get('vape')}", settings.steps)

        def show(record: dict) -> None:
            if record.get("split") == "val":
                gap = record.get("condition_gap_fraction")
                reporter.say(f"    step {record['step']}: held-out loss {record.get('loss', math.nan):.4f}"
                             + (f", condition gap {gap:.1%}" if gap is not None else ""))
            else:
                tick(record["step"])

        train(config, run, resume="latest", on_log=show)
    return run


def counter(tick: Callable[..., None]) -> Callable[[str], None]:
    """An ``on_item(outcome)`` that advances ``tick(done, failed)`` once per item."""
    counts = {"done": 0, "failed": 0}

    def on_item(outcome: str) -> None:
        counts["done"] += 1
        counts["failed"] += outcome in ("failed", "skipped")
        tick(counts["done"], counts["failed"])
    return on_item


def _scores(runs: dict[str, Path], dataset: Path, vae, key: str, settings: DemoSettings,
            reporter: Reporter) -> dict:
    """Sample metrics of every variant, chance and the VAE's ceiling on the same held-out views,
    and each run's condition gap: {"variants": {v: {metric: mean}}, "chance", "ceiling",
    "gap": {v: fraction}, "views": n}."""
    from vilearn.bench.evaluate import EvalSettings, evaluate_model, measure_condition_gap, reference_scores
    from vilearn.train.loading import load_trained

    settings_ = EvalSettings(n=settings.eval_views, steps=20, resolution=64, points=5000)
    scores: dict = {"variants": {}, "gap": {}, "views": settings.eval_views}
    for variant, run in runs.items():
        trained = load_trained(run)
        result = evaluate_model(trained, vae, settings_,
                                on_item=counter(reporter.track(f"score {variant}", settings.eval_views)))
        scores["variants"][variant] = {m: result.summary[m].mean for m in METRICS if m in result.summary}
        scores["gap"][variant] = measure_condition_gap(trained, settings.eval_views)
    for mode in ("chance", "ceiling"):
        result = reference_scores(dataset, vae, key, settings.tokens, mode, settings_)
        scores[mode] = {m: result.summary[m].mean for m in METRICS if m in result.summary}
    return scores


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


def _summary(report: Path, source: str, runs: dict[str, Path], scores: dict, settings: DemoSettings) -> None:
    from vilearn.bench.convergence import chance_to_ceiling
    from vilearn.io import write_json, write_text
    from vilearn.train.validation import condition_gap_verdict

    data = "Sweet Home 3D furniture (real, textured objects)" if source == FURNITURE else source
    lines = ["# ViLearn demo", "",
             f"{settings.shapes} shapes of {data}, each of their views its own shape in its camera's "
             f"frame; {settings.tokens} latent tokens; the tiny MM-DiT on frozen EfficientNet-Lite0 "
             f"image tokens ({FEATURES}), {settings.steps} training steps per variant (same data "
             "order and seeds).", "",
             f"## Generated meshes on {scores['views']} held-out views", "",
             "Chance: a random training shape's latents for every view (a model that ignores its "
             "image). Ceiling: each view's own latents decoded by the same VAE (the best a model can "
             "do through it). 'Share' is how far from chance (0) to ceiling (1) a variant got.", "",
             "| | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name in (*scores["variants"], "chance", "ceiling"):
        row = scores["variants"].get(name, scores.get(name, {}))
        lines.append(f"| {name} | " + " | ".join(f"{row.get(m, math.nan):.3f}" for m in METRICS) + " |")
    for variant, row in scores["variants"].items():
        shares = [chance_to_ceiling(row.get(m, math.nan), scores, m) for m in METRICS]
        lines.append(f"| {variant}: share | " + " | ".join("-" if math.isnan(x) else f"{x:.2f}"
                                                           for x in shares) + " |")
    lines += ["", "## Does the model read its image?", "",
              "| variant | held-out loss, own image | another object's | null | condition gap |",
              "|---|---|---|---|---|"]
    for variant, gap in scores["gap"].items():
        if "condition_gap" in gap:
            lines.append(f"| {variant} | {gap['loss']:.4f} | {gap['loss_other']:.4f} | "
                         f"{gap['loss_null']:.4f} | {gap['condition_gap_fraction']:.1%} |")
    base = scores["gap"].get("none", {}).get("condition_gap_fraction")
    lines += ["", f"Baseline: {condition_gap_verdict(base)}.", "",
              "| variant | final held-out flow loss, fixed partition | with the true VST |", "|---|---|---|"]
    for variant, run in runs.items():
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        val = [r for r in rows if r.get("split") == "val" and "loss" in r]
        last = val[-1] if val else {}
        fixed = last.get("loss_fixed", last.get("loss", math.nan))
        lines.append(f"| {variant} | {fixed:.4f} | {last.get('loss', math.nan):.4f} |")
    timings = ", ".join(f"{k} {v:.0f}" for k, v in settings.timings.items())
    lines += ["", f"Wall time per stage (seconds, this machine): {timings}",
              "", "![curves](curves.png)", "", "![samples](samples.png)", "",
              "## What this shows, and what it does not", "",
              "It shows the whole pipeline on one CPU in minutes: data with textured renders, "
              "visibility grouping, both denoisers trained on the same data order, generation from "
              "held-out images, and how far the samples got from chance towards the VAE's ceiling. "
              f"It does not measure ViLearn's speed-up: one seed and {settings.steps} steps cannot; "
              "that is `vilearn bench convergence` (benchmarks/results/convergence-furniture-cpu.md). "
              "The held-out loss with the true VST uses information the baseline does not have; the "
              "fixed-partition loss labels a held-out shape's tokens by position, which inference "
              "never does (it starts from exchangeable noise). The generated meshes are the measure "
              "that counts."]
    write_text(report / "index.md", "\n".join(lines) + "\n")
    write_json(report / "metrics.json", {"source": source, "settings": {
        "shapes": settings.shapes, "tokens": settings.tokens, "steps": settings.steps,
        "features": FEATURES}, **{k: scores[k] for k in ("variants", "chance", "ceiling", "views")},
        "condition_gap": {v: g.get("condition_gap_fraction") for v, g in scores["gap"].items()},
        "timings": settings.timings})
