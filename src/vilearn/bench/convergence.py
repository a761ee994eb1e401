"""``vilearn bench convergence``: train every VAPE variant on identical data order and seeds,
evaluate all of them at the same checkpoints as at inference, and report curves, a table and
the speed-up of each variant over ``none``.

Resumable: training resumes from each run's checkpoints, and evaluations already in
``OUT/results.jsonl`` are not redone. Variants advance together, checkpoint by checkpoint, so
an interrupted benchmark still compares like with like.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from vilearn.bench.evaluate import LOWER_IS_BETTER, EvalSettings
from vilearn.bench.speedup import speedup
from vilearn.config import AtLeastOne, Fraction, NonNegative, load_config
from vilearn.io import write_json, write_text

VARIANTS = {  # name -> train-config overrides
    "none": ["model.vape=none"],
    "va-rope": ["model.vape=va-rope"],
    "va-lpe": ["model.vape=va-lpe"],
    "rope": ["model.vape=rope"],
    "va-rope-random": ["model.vape=va-rope", "train.visibility=random"],
}


@dataclass
class BenchData:
    """The benchmark's own dataset, built (resumably) under OUT/dataset."""

    source: str = "pybullet:random_urdfs"
    limit: Annotated[int, AtLeastOne] | None = None
    prepare: str = "prepare-demo"  # PrepareConfig file or packaged name
    vae: str = "packaged"  # 'packaged' (the committed tiny VAE) or a VAE path
    vae_name: str = "bench-vae"  # readable part of the latents folder (bench-vae-<hash8>)
    tokens: Annotated[int, AtLeastOne] = 64
    # 'object' (one latent per shape, the paper's setting) or 'view' (one latent per view, the
    # shape rotated into its camera's frame: the image fixes the pose; design.md, "Frames")
    frame: str = "object"
    # r of the inference partition (first ceil(N r) tokens visible); None = the dataset's measured
    # mean visible-token fraction, which at few tokens is well above the paper's 1/3
    visible_ratio: Annotated[float, Fraction] | None = None


@dataclass
class BenchConfig:
    data: BenchData = field(default_factory=BenchData)
    train: str = "dit-tiny"  # the base training config (file or packaged name)
    overrides: list[str] = field(default_factory=list)  # applied to every variant
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: list[Annotated[int, NonNegative]] = field(default_factory=lambda: [0, 1])
    steps: Annotated[int, AtLeastOne] = 3000
    batch_size: Annotated[int, AtLeastOne] = 16
    eval_every: Annotated[int, AtLeastOne] = 500
    eval: EvalSettings = field(default_factory=EvalSettings)
    metrics: list[str] = field(default_factory=lambda: [
        "iou", "fscore@0.05", "chamfer_l1", "components", "silhouette_iou"])
    average_last: Annotated[int, AtLeastOne] = 2
    references: bool = True  # score the VAE ceiling and chance once

    def __post_init__(self) -> None:
        if self.data.frame not in ("object", "view"):
            raise ValueError(f"data.frame: {self.data.frame!r} is not 'object' or 'view'")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"variants: {unknown[0]!r} is not one of {', '.join(VARIANTS)}")
        if "none" not in self.variants:
            raise ValueError("variants: 'none' (the baseline) is required for the speed-up")
        if self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError(f"steps {self.steps} must be a multiple of eval_every {self.eval_every}")


def higher_is_better(metric: str) -> bool:
    return not metric.split("/")[-1].startswith(LOWER_IS_BETTER)


def partition_ratio(bench: BenchConfig, out: Path, key: str) -> float:
    """r of the inference partition: the config's, or the benchmark dataset's measured mean
    visible-token fraction (of the latents ``latents/<key>``)."""
    from vilearn.grouping import measured_visible_ratio

    d = bench.data
    if d.visible_ratio is not None:
        return d.visible_ratio
    return measured_visible_ratio(out / "dataset", key, d.tokens)


def trained_partition_ratio(bench: BenchConfig, out: Path) -> float:
    """r as the baseline's first run was trained with (its config.yaml); NaN before any run."""
    path = out / "runs" / f"none-seed{bench.seeds[0]}" / "config.yaml"
    if not path.is_file():
        return math.nan
    import yaml

    return float(yaml.safe_load(path.read_text()).get("model", {}).get("visible_ratio", math.nan))


def train_config(bench: BenchConfig, out: Path, variant: str, seed: int, key: str):
    """The training config of one variant and seed; ``key``: the latents folder (VAE identity)."""
    from vilearn.bench.data import resolve_vae_path
    from vilearn.flow.normalize import LatentStats
    from vilearn.train.config import TrainConfig
    from vilearn.vae.encode import latents_dir

    d = bench.data
    stats = latents_dir(out / "dataset", key, d.tokens) / "stats.json"
    channels = LatentStats.load(stats).channels  # the DiT predicts the VAE's latents
    data = [f"dataset={out / 'dataset'}", f"vae={resolve_vae_path(d.vae)}",
            f"model.in_channels={channels}", f"model.visible_ratio={partition_ratio(bench, out, key)}",
            f"vae_name={d.vae_name}",
            f"stages=[{{tokens: {d.tokens}, steps: {bench.steps}, batch_size: {bench.batch_size}}}]"]
    # view frame: the image's framing is the object's size and place in the latents' frame, so
    # the condition is not cropped
    framing = ["conditioner.crop=false"] if d.frame == "view" else []
    # what the benchmark derives from its dataset comes after the config's overrides, which may
    # replace a whole section (bench-gpu's `model={...}`) and would otherwise drop it
    config = load_config(TrainConfig, bench.train, [*bench.overrides, *data, *framing,
                                                    *VARIANTS[variant], f"train.seed={seed}"])
    return config


def run_benchmark(bench: BenchConfig, out: str | Path, say: Callable[[str], None] = print) -> Path:
    """Train, evaluate and report; returns the report's path (OUT/convergence.md)."""
    from vilearn.bench.data import build_dataset, cache_condition_features, default_device, resolve_vae_path
    from vilearn.bench.evaluate import evaluate_model, reference_scores
    from vilearn.train.loading import load_trained
    from vilearn.train.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = bench.data
    vae, identity = build_dataset(out / "dataset", d.source, d.limit, d.prepare, resolve_vae_path(d.vae),
                                  d.vae_name, [d.tokens], say=say, device=default_device(), frame=d.frame)
    base = train_config(bench, out, "none", bench.seeds[0], identity.key)
    if base.conditioner.cached:  # a frozen encoder's tokens, computed once for every run
        cache_condition_features(base, say, default_device())
    results_path = out / "results.jsonl"
    done = {(r["variant"], r["seed"], r["step"]) for r in _read(results_path)}
    for step in range(bench.eval_every, bench.steps + 1, bench.eval_every):
        for variant in bench.variants:
            for seed in bench.seeds:
                if (variant, seed, step) in done:
                    continue
                config = train_config(bench, out, variant, seed, identity.key)
                run = out / "runs" / f"{variant}-seed{seed}"
                say(f"step {step}: {variant} seed {seed}")
                train(config, run, resume="latest", max_steps=step)
                trained = load_trained(run, device=default_device())
                if trained.step != step:
                    raise RuntimeError(f"{run}: expected a checkpoint at step {step}, got {trained.step}")
                result = evaluate_model(trained, vae, bench.eval)
                say_skipped(say, result.skipped)
                _append(results_path, {"variant": variant, "seed": seed, "step": step,
                                       "means": {k: s.mean for k, s in result.summary.items()},
                                       **({"skipped": result.skipped} if result.skipped else {})})
    if bench.references and not (out / "references.json").is_file():
        config = train_config(bench, out, "none", bench.seeds[0], identity.key)
        references = {}
        for mode in ("ceiling", "chance"):
            say(f"reference: {mode}")
            result = reference_scores(config.dataset, vae, identity.key,
                                      config.stages[-1].tokens, mode, bench.eval)
            say_skipped(say, result.skipped)
            references[mode] = {k: s.mean for k, s in result.summary.items()}
        write_json(out / "references.json", references)
    return write_report(out, bench)


def say_skipped(say: Callable[[str], None], skipped: dict[str, str]) -> None:
    """Name the held-out views an evaluation skipped (unreadable files), if any."""
    if skipped:
        first, why = next(iter(skipped.items()))
        say(f"  {len(skipped)} held-out view(s) skipped, e.g. {first}: {why}")


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict) -> None:
    with path.open("a") as handle:  # one line per evaluation: a torn last line is dropped by _read
        handle.write(json.dumps(record) + "\n")


def curves(records: list[dict], metric: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """variant -> (steps (K,), mean over seeds (K,), spread = std over seeds (K,))."""
    table: dict[str, dict[int, list[float]]] = {}
    for r in records:
        value = r["means"].get(metric, math.nan)
        table.setdefault(r["variant"], {}).setdefault(r["step"], []).append(value)
    out = {}
    for variant, by_step in table.items():
        steps = np.array(sorted(by_step))
        values = [np.array(by_step[s], float) for s in steps]
        out[variant] = (steps, np.array([np.nanmean(v) for v in values]),
                        np.array([np.nanstd(v) for v in values]))
    return out


VAL_KEYS = ("loss", "loss_fixed", "loss_other", "loss_null", "condition_gap", "condition_gap_fraction")


def val_records(out: Path, variant: str, seed: int) -> dict[int, dict]:
    """step -> the run's held-out validation record (the last one logged at that step)."""
    log = out / "runs" / f"{variant}-seed{seed}" / "log.jsonl"
    return {r["step"]: r for r in _read(log) if r.get("split") == "val" and "loss" in r}


def flow_loss_curves(out: Path, bench: BenchConfig) -> dict[str, dict[str, list]]:
    """variant -> {"step", "loss" (true VST), "loss_fixed", "loss_other", "loss_null",
    "condition_gap", "condition_gap_fraction"} from the runs' logs, seed-averaged (a key a run
    did not log is NaN; ``loss_fixed`` defaults to ``loss`` for variants without visibility)."""
    result = {}
    for variant in bench.variants:
        per_step: dict[int, dict[str, list[float]]] = {}
        for seed in bench.seeds:
            for step, r in val_records(out, variant, seed).items():
                entry = per_step.setdefault(step, {k: [] for k in VAL_KEYS})
                for key in VAL_KEYS:
                    default = r["loss"] if key == "loss_fixed" else math.nan
                    entry[key].append(float(r.get(key, default)))
        steps = sorted(per_step)
        result[variant] = {"step": steps, **{key: [float(np.mean(per_step[s][key])) for s in steps]
                                             for key in VAL_KEYS}}
    return result


def values_table(records: list[dict], bench: BenchConfig) -> list[str]:
    """Markdown: every metric's seed mean (+- std over seeds) per variant and checkpoint."""
    steps = sorted({r["step"] for r in records})
    lines = ["## Values (mean +- std over seeds)", "",
             "| metric | variant | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for metric in bench.metrics:
        for variant, (v_steps, mean, spread) in curves(records, metric).items():
            cells = {int(s): f"{m:.4g} +- {e:.2g}" for s, m, e in zip(v_steps, mean, spread)}
            lines.append(f"| {metric} | {variant} | " + " | ".join(cells.get(s, "-") for s in steps) + " |")
    return lines + [""]


def training_group(variant: str) -> str:
    """What the run's validation loss tagged as visible: the VST, or the control's random group."""
    return "random group" if "train.visibility=random" in VARIANTS[variant] else "true VST"


def write_report(out: Path, bench: BenchConfig) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read(out / "results.jsonl")
    if not records:
        raise ValueError(f"{out}: no evaluation results yet")
    ref_path = out / "references.json"
    references = json.loads(ref_path.read_text()) if ref_path.is_file() else {}
    lines = ["# Convergence benchmark", "",
             f"Variants {', '.join(bench.variants)}; seeds {bench.seeds}; evaluated every "
             f"{bench.eval_every} steps on {bench.eval.n} held-out views (meshes generated as at "
             "inference: fixed partition, no ground-truth visibility).", ""]
    source = ("set in the config" if bench.data.visible_ratio is not None else
              f"the dataset's measured visible-token fraction at {bench.data.tokens} tokens")
    lines += [f"Inference partition: the first {trained_partition_ratio(bench, out):.3f} of the tokens "
              f"({source}).", ""]
    lines += values_table(records, bench)
    speed_rows = []
    for metric in bench.metrics:
        data = curves(records, metric)
        figure, axis = plt.subplots(figsize=(6, 4))
        for variant, (steps, mean, spread) in data.items():
            axis.plot(steps, mean, marker="o", label=variant)
            axis.fill_between(steps, mean - spread, mean + spread, alpha=0.15)
        for mode, style in (("ceiling", ":"), ("chance", "--")):
            if metric in references.get(mode, {}):
                axis.axhline(references[mode][metric], color="grey", linestyle=style, label=mode)
        axis.set_xlabel("training step")
        axis.set_ylabel(f"{metric} ({'higher' if higher_is_better(metric) else 'lower'} is better)")
        axis.legend(fontsize=7)
        figure.tight_layout()
        name = f"curve-{metric.replace('@', '_').replace('/', '_')}.png"
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        lines.append(f"![{metric}]({name})")
        if "none" in data:
            steps, base, _ = data["none"]
            for variant, (v_steps, values, _) in data.items():
                if variant == "none" or len(v_steps) != len(steps):
                    continue
                s = speedup(steps, base, values, higher_is_better(metric), bench.average_last)
                speed_rows.append((metric, variant, s, values[-1], base[-1]))
    lines += ["", "## Speed-up over `none` (steps `none` needs to reach its own final value / "
              "steps the variant needs)", "",
              "| metric | variant | final (variant) | final (none) | target | none reaches at | "
              "variant reaches at | speed-up |", "|---|---|---|---|---|---|---|---|"]
    for metric, variant, s, final, base_final in speed_rows:
        ratio = "not reached" if s["speedup"] is None else f"{s['speedup']:.2f}x"
        reach = "-" if s["variant_steps"] is None else f"{s['variant_steps']:.0f}"
        lines.append(f"| {metric} | {variant} | {final:.4g} | {base_final:.4g} | {s['target']:.4g} | "
                     f"{s['baseline_steps']:.0f} | {reach} | {ratio} |")
    if references:
        lines += ["", "## Chance and ceiling", "", "| metric | chance | ceiling |", "|---|---|---|"]
        for metric in bench.metrics:
            lines.append(f"| {metric} | {references.get('chance', {}).get(metric, math.nan):.4g} | "
                         f"{references.get('ceiling', {}).get(metric, math.nan):.4g} |")
        lines += ["", "Each variant's final value (seed mean) as a share of the way from chance (0) to "
                  "the ceiling (1):", "", "| variant | " + " | ".join(bench.metrics) + " |",
                  "|---|" + "---|" * len(bench.metrics)]
        for variant in bench.variants:
            cells = []
            for metric in bench.metrics:
                finals = curves(records, metric).get(variant)
                share = (math.nan if finals is None else
                         chance_to_ceiling(finals[1][-1], references, metric))
                cells.append("-" if math.isnan(share) else f"{share:.2f}")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    losses = flow_loss_curves(out, bench)
    if any(v["step"] for v in losses.values()):
        figure, axis = plt.subplots(figsize=(6, 4))
        for variant, curve in losses.items():
            if curve["step"]:
                line, = axis.plot(curve["step"], curve["loss_fixed"], label=f"{variant} (fixed partition)")
                if curve["loss"] != curve["loss_fixed"]:
                    axis.plot(curve["step"], curve["loss"], linestyle="--", color=line.get_color(),
                              label=f"{variant} ({training_group(variant)})")
        axis.set_xlabel("training step")
        axis.set_ylabel("held-out flow loss")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / "curve-flow-loss.png", dpi=110)
        plt.close(figure)
        lines += ["", "## Held-out flow loss", "",
                  "Dashed: with the groups the run trained with (the true VST, information the baseline "
                  "does not have; a random group of the VST's size for va-rope-random); not the speed-up.",
                  "", "![flow loss](curve-flow-loss.png)", "",
                  "| variant | step | loss, fixed partition | loss, training groups |", "|---|---|---|---|"]
        for variant, curve in losses.items():
            if curve["step"]:
                lines.append(f"| {variant} | {curve['step'][-1]} | {curve['loss_fixed'][-1]:.4f} | "
                             f"{curve['loss'][-1]:.4f} |")
        lines += condition_gap_section(out, losses, plt)
    path = out / "convergence.md"
    write_text(path, "\n".join(lines) + "\n")
    write_summary(out, bench, records, references)
    return path


def chance_to_ceiling(value: float, references: dict, metric: str) -> float:
    """How far ``value`` has come from chance (0) to the VAE's ceiling (1); NaN without both
    references or when they nearly coincide (within 5% of the larger: the component count of a
    weak VAE's reconstructions can equal a random shape's, and a share of nothing means nothing).
    Works alike for lower-is-better metrics."""
    chance = references.get("chance", {}).get(metric, math.nan)
    ceiling = references.get("ceiling", {}).get(metric, math.nan)
    if not math.isfinite(chance) or not math.isfinite(ceiling):
        return math.nan
    if abs(ceiling - chance) <= 0.05 * max(abs(chance), abs(ceiling)):
        return math.nan
    return (value - chance) / (ceiling - chance)


def condition_gap_section(out: Path, losses: dict[str, dict[str, list]], plt) -> list[str]:
    """The condition gap of every variant over training: a plot, the final values and a verdict."""
    from vilearn.train.validation import condition_gap_verdict

    measured = {v: c for v, c in losses.items()
                if c["step"] and not all(map(math.isnan, c["condition_gap"]))}
    if not measured:
        return ["", "## Condition gap", "", "Not measured: no run's validation logged another object's loss."]
    figure, axis = plt.subplots(figsize=(6, 4))
    for variant, curve in measured.items():
        percent = [100 * f for f in curve["condition_gap_fraction"]]
        axis.plot(curve["step"], percent, marker="o", label=variant)
    axis.set_xlabel("training step")
    axis.set_ylabel("condition gap, % of the held-out loss")
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "curve-condition-gap.png", dpi=110)
    plt.close(figure)
    lines = ["", "## Condition gap", "",
             "Held-out flow loss (true VST) with another object's image minus with the view's own "
             "image, as a share of the loss: how much each model reads its condition. The null "
             "condition's loss is the unconditional model's.", "",
             "![condition gap](curve-condition-gap.png)", "",
             "| variant | step | loss, own | loss, another object's | loss, null | gap | gap / loss |",
             "|---|---|---|---|---|---|---|"]
    for variant, curve in measured.items():
        lines.append(f"| {variant} | {curve['step'][-1]} | {curve['loss'][-1]:.4f} | "
                     f"{curve['loss_other'][-1]:.4f} | {curve['loss_null'][-1]:.4f} | "
                     f"{curve['condition_gap'][-1]:.4f} | {curve['condition_gap_fraction'][-1]:.2%} |")
    if "none" in measured:
        lines += ["", f"Baseline: {condition_gap_verdict(measured['none']['condition_gap_fraction'][-1])}."]
    return lines


def run_speedups(records: list[dict], bench: BenchConfig, variant: str, seed: int) -> dict:
    """metric -> this run's speed-up over the ``none`` run of the same seed (None: not reached)."""
    def curve(name: str, metric: str) -> tuple[list[int], list[float]]:
        rows = sorted((r["step"], r["means"].get(metric, math.nan)) for r in records
                      if r["variant"] == name and r["seed"] == seed)
        return [s for s, _ in rows], [v for _, v in rows]

    out = {}
    for metric in bench.metrics:
        base_steps, base = curve("none", metric)
        steps, values = curve(variant, metric)
        if variant == "none" or not steps or steps != base_steps:
            out[metric] = None if variant != "none" else 1.0
            continue
        out[metric] = speedup(steps, base, values, higher_is_better(metric), bench.average_last)["speedup"]
    return out


def write_summary(out: Path, bench: BenchConfig, records: list[dict], references: dict) -> Path:
    """OUT/summary.json: the benchmark in machine-readable form (see the README)."""
    from vilearn.config import to_dict

    runs = []
    for variant in bench.variants:
        for seed in bench.seeds:
            mine = sorted((r for r in records if r["variant"] == variant and r["seed"] == seed),
                          key=lambda r: r["step"])
            if not mine:
                continue
            val = val_records(out, variant, seed)
            last = val[max(val)] if val else {}
            runs.append({
                "variant": variant, "seed": seed, "step": mine[-1]["step"],
                "metrics": dict(mine[-1]["means"]),  # every metric of the last evaluation
                "curve": {"step": [r["step"] for r in mine],
                          **{m: [r["means"].get(m) for r in mine] for m in bench.metrics}},
                "condition_gap": {"absolute": last.get("condition_gap"),
                                  "fraction": last.get("condition_gap_fraction"),
                                  "loss": last.get("loss"), "loss_other": last.get("loss_other"),
                                  "loss_null": last.get("loss_null"), "step": last.get("step")},
                "flow_loss": {"true_vst": last.get("loss"),
                              "fixed_partition": last.get("loss_fixed", last.get("loss"))},
                "speedup": run_speedups(records, bench, variant, seed),
                "chance_to_ceiling": {m: chance_to_ceiling(v, references, m)
                                      for m, v in mine[-1]["means"].items()},
            })
    summary = {
        "config": to_dict(bench),
        "partition_ratio": trained_partition_ratio(bench, out),
        "chance": references.get("chance", {}),
        "ceiling": references.get("ceiling", {}),
        "runs": runs,
    }
    path = out / "summary.json"
    write_json(path, _finite(summary))
    return path


def _finite(value):
    """NaN and infinities as null, so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
