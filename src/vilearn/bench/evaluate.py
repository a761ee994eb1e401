"""``vilearn evaluate``: generate for held-out condition views as at inference (fixed seeds,
the fixed visibility partition, no ground truth), score every metric, write a report.

Also the two reference points every score needs: the *ceiling* (the VAE's own reconstruction
of the ground-truth latents) and *chance* (a random training shape's latents against each
held-out view). A model whose scores do not rise well above chance has learnt nothing to
measure a speed-up on.

An unreadable file (a truncated view, a damaged latents file) skips the held-out view it belongs
to: the evaluation goes on over the rest, and the result names each skipped view and its file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import trimesh

from vilearn.config import AtLeastOne, NonNegative, Range
from vilearn.data.dataset import PreparedDataset
from vilearn.io import CorruptFileError
from vilearn.metrics import ConditionView, Reference, aggregate, evaluate_mesh
from vilearn.metrics.stats import Summary

# What a bad file raises: the held-out view that needs it is skipped and the rest evaluated.
UNREADABLE = (CorruptFileError, FileNotFoundError)
# The metric that ranks samples for the best / worst grid (higher is better).
RANK_KEY = "fscore@0.05"
LOWER_IS_BETTER = ("chamfer", "components", "floater_area", "depth_l1", "empty")
# Every metric is >= 0; these are also <= 1 (fractions, F-scores, IoUs, |cos|).
UNIT_INTERVAL = ("fscore", "iou", "normal_consistency", "silhouette_iou", "mask_coverage",
                 "floater_area", "seen_fraction", "empty")
REFERENCES_TEXT = (
    "Reference points: **ceiling** decodes each held-out shape's own latents (encoded from its "
    "true surface) with the same VAE and extraction: the best any model generating through this "
    "VAE can score. **chance** decodes a random training shape's latents against each held-out "
    "view: what a model that ignores its image scores. A model is worth a speed-up measurement "
    "only when it is well above chance.")


def metric_range(key: str) -> tuple[float, float]:
    """The values metric ``key`` can take: [0, 1] or [0, inf)."""
    name = key.split("/")[-1]
    return (0.0, 1.0) if name.startswith(UNIT_INTERVAL) else (0.0, math.inf)


@dataclass
class EvalSettings:
    split: str = "val"
    n: Annotated[int, AtLeastOne] = 200  # held-out (shape, view) pairs
    seeds: list[Annotated[int, NonNegative]] = field(default_factory=lambda: [0])
    steps: Annotated[int, AtLeastOne] = 25  # Euler steps
    cfg_scale: Annotated[float, NonNegative] = 3.0
    resolution: Annotated[int, Range(8)] = 64  # mesh extraction grid
    points: Annotated[int, AtLeastOne] = 20000  # surface samples per generated mesh for the metrics
    batch: Annotated[int, AtLeastOne] = 32  # conditions sampled together

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: at least one sampling seed is required")


def held_out_pairs(data: PreparedDataset, split: str, n: int) -> list[tuple[str, int]]:
    """Up to ``n`` (shape id, view) pairs of ``split``: every shape's view 0, then view 1, ..."""
    rows = [(row["id"], row["views"]) for row in data.rows(split)]
    pairs: list[tuple[str, int]] = []
    for view in range(max((v for _, v in rows), default=0)):
        pairs += [(shape_id, view) for shape_id, views in rows if view < views]
    return pairs[:n]


def to_trimesh(mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(np.asarray(mesh.verts), np.asarray(mesh.faces), process=False)


def score(data: PreparedDataset, shape_id: str, view: int, mesh, points: int, seed: int) -> dict:
    """Every metric of ``mesh`` (a ``vilearn.vae.surface.Mesh``) against shape ``shape_id``."""
    reference = Reference.from_dataset(data, shape_id)
    condition = ConditionView.from_arrays(data.view(shape_id, view))
    return evaluate_mesh(to_trimesh(mesh), reference, condition, num_points=points, seed=seed)


@dataclass
class EvalResult:
    rows: list[dict]  # one per (shape, view, seed): id, view, seed and every metric
    summary: dict[str, Summary]
    meshes: dict[tuple[str, int, int], object] = field(default_factory=dict)  # (id, view, seed)
    skipped: dict[str, str] = field(default_factory=dict)  # "id view k" -> the unreadable file, why


def item_name(shape_id: str, view: int) -> str:
    """How a held-out view is named where it is skipped."""
    return f"{shape_id} view {view}"


def evaluate_model(trained, vae, settings: EvalSettings, tokens: int | None = None,
                   on_item: Callable[[str], None] | None = None) -> EvalResult:
    """Generate and score ``settings.n`` held-out views for each seed with a ``TrainedModel``.
    ``on_item(outcome)`` follows each (view, seed): outcome "scored", or "skipped" (a file of the
    view or its shape is unreadable; ``EvalResult.skipped`` names it)."""
    from vilearn.flow.pipeline import generate_latents
    from vilearn.train.data import condition_image
    from vilearn.train.validation import generated_mesh

    data = PreparedDataset(trained.config.dataset)
    tokens = tokens or trained.tokens
    pairs = held_out_pairs(data, settings.split, settings.n)
    if not pairs:
        raise ValueError(f"dataset {data.root}: no {settings.split!r} views to evaluate")
    conditioner = trained.model.conditioner
    rows, meshes, skipped = [], {}, {}
    tick = on_item or (lambda outcome: None)
    for seed in settings.seeds:
        for start in range(0, len(pairs), settings.batch):
            chunk, images = [], []
            for shape_id, view in pairs[start:start + settings.batch]:
                try:
                    images.append(condition_image(data, shape_id, view, conditioner.image_size,
                                                  conditioner.crop))
                    chunk.append((shape_id, view))
                except UNREADABLE as error:
                    skipped[item_name(shape_id, view)] = str(error)
                    tick("skipped")
            if not chunk:
                continue
            latents = generate_latents(trained.model.dit, conditioner, images, n_tokens=tokens,
                                       steps=settings.steps, cfg_scale=settings.cfg_scale,
                                       seed=seed + start, stats=trained.stats[tokens])
            for (shape_id, view), latent in zip(chunk, latents):
                mesh = generated_mesh(vae, latent, settings.resolution)
                try:
                    metrics = score(data, shape_id, view, mesh, settings.points, seed)
                except UNREADABLE as error:
                    skipped[item_name(shape_id, view)] = str(error)
                    tick("skipped")
                    continue
                rows.append({"id": shape_id, "view": view, "seed": seed, **metrics})
                meshes[(shape_id, view, seed)] = mesh
                tick("scored")
    return EvalResult(rows, summarize(rows), meshes, skipped)


def reference_scores(dataset: str | Path, vae, vae_name: str, tokens: int, mode: str,
                     settings: EvalSettings, on_item: Callable[[str], None] | None = None) -> EvalResult:
    """``ceiling``: decode each held-out shape's own latent mean; ``chance``: decode a random
    training shape's latent mean (seeded) against each held-out view. An unreadable latents or
    view file skips its view, as in ``evaluate_model``."""
    from vilearn.train.validation import generated_mesh
    from vilearn.vae.encode import latents_dir, read_latents

    if mode not in ("ceiling", "chance"):
        raise ValueError(f"reference mode {mode!r} is not 'ceiling' or 'chance'")
    data = PreparedDataset(dataset)
    folder = latents_dir(dataset, vae_name, tokens)
    pairs = held_out_pairs(data, settings.split, settings.n)
    train_ids = [i for i in data.ids("train") if (folder / f"{i}.safetensors").is_file()]
    rng = np.random.default_rng(settings.seeds[0])
    rows, meshes, skipped = [], {}, {}
    tick = on_item or (lambda outcome: None)
    for shape_id, view in pairs:
        source = shape_id if mode == "ceiling" else train_ids[rng.integers(len(train_ids))]
        try:
            latent = read_latents(folder / f"{source}.safetensors")["mean"]
            mesh = generated_mesh(vae, latent, settings.resolution)
            metrics = score(data, shape_id, view, mesh, settings.points, 0)
        except UNREADABLE as error:
            skipped[item_name(shape_id, view)] = str(error)
            tick("skipped")
            continue
        rows.append({"id": shape_id, "view": view, "seed": 0, "source": source, **metrics})
        meshes[(shape_id, view, 0)] = mesh
        tick("scored")
    return EvalResult(rows, summarize(rows), meshes, skipped)


def measure_condition_gap(trained, views: int = 64, split: str = "val") -> dict:
    """How much the model reads its condition: the held-out flow loss (true VST, fixed noise and
    timesteps, EMA weights) with each view's own condition, another object's and the null one
    (``Validator.condition_gap``) on the first ``views`` held-out views, plus a verdict."""
    import dataclasses

    from vilearn.train.loading import latents_key
    from vilearn.train.trainer import cached_features
    from vilearn.train.validation import Validator, condition_gap_verdict

    config = trained.config
    config = dataclasses.replace(config, val=dataclasses.replace(config.val, shapes=views))
    validator = Validator(config, latents_key(trained), trained.stats, out=".",
                          features=cached_features(config, trained.model))
    model = trained.model
    items = validator.held_out(trained.tokens, model.conditioner.image_size, model.conditioner.crop, split)
    if not items:
        return {"views": 0,
                "verdict": f"condition gap not measured: no {split!r} view with latents and groups"}
    record = validator.condition_gap(model, items, trained.stats[trained.tokens])
    verdict = condition_gap_verdict(record.get("condition_gap_fraction"))
    return {"views": len(items), "split": split, **record, "verdict": verdict}


def condition_gap_lines(gap: dict) -> list[str]:
    """The condition gap as Markdown for a report."""
    if "loss" not in gap:
        return ["## Condition gap", "", gap["verdict"]]
    lines = ["## Condition gap", "",
             f"Held-out flow loss on {gap['views']} views (fixed noise and timesteps, true VST):", "",
             "| condition | loss | " + " | ".join(f"t = {t}" for t in gap["t"]) + " |",
             "|---|---|" + "---|" * len(gap["t"])]
    for name, key in (("own image", "loss"), ("another object's image", "loss_other"),
                      ("null condition", "loss_null")):
        if key in gap:
            cells = " | ".join(f"{v:.4f}" for v in gap[f"{key}_by_t"])
            lines.append(f"| {name} | {gap[key]:.4f} | {cells} |")
    if "condition_gap" in gap:
        lines += ["", f"Gap (another object's - own): {gap['condition_gap']:.4f}, "
                  f"{gap['condition_gap_fraction']:.1%} of the loss (t runs from noise, 0, to data, 1)."]
    return lines + ["", gap["verdict"] + "."]


def summarize(rows: list[dict]) -> dict[str, Summary]:
    metrics = [{k: v for k, v in row.items() if isinstance(v, float)} for row in rows]
    return aggregate(metrics)


def markdown_table(columns: dict[str, dict[str, Summary]]) -> str:
    """Metrics as rows, one column per result: ``mean [low, high]`` (95% t-interval, clipped to
    the values the metric can take: a t-interval knows nothing of bounds)."""
    names = list(columns)
    keys = list(dict.fromkeys(k for summary in columns.values() for k in summary))
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in keys:
        cells = []
        for name in names:
            s = columns[name].get(key)
            if s is None or math.isnan(s.mean):
                cells.append("-")
            elif math.isnan(s.low):
                cells.append(f"{s.mean:.4g}")
            else:
                low, high = metric_range(key)
                cells.append(f"{s.mean:.4g} [{max(s.low, low):.4g}, {min(s.high, high):.4g}]")
        arrow = "↓" if key.split("/")[-1].startswith(LOWER_IS_BETTER) else "↑"
        lines.append(f"| {key} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: str | Path, results: dict[str, EvalResult], title: str, command: str,
                 grid: tuple[str, str | Path] | None = None, condition_gap: dict | None = None) -> Path:
    """OUT/eval.json (every row and summary), OUT/eval.md (the table) and, with ``grid`` =
    (result name, dataset), OUT/cases.png: the best and worst cases of that result;
    ``condition_gap`` (``measure_condition_gap``) goes into both."""
    from vilearn.io import write_json, write_text

    out = Path(out)
    report = {name: {"summary": {k: s.to_dict() for k, s in r.summary.items()}, "rows": r.rows,
                     "skipped": r.skipped} for name, r in results.items()}
    if condition_gap is not None:
        report["condition_gap"] = condition_gap
    write_json(out / "eval.json", report)
    text = [f"# {title}", "", f"Command: `{command}`", "",
            markdown_table({name: r.summary for name, r in results.items()}), "",
            "Means with 95% Student-t intervals over held-out views x seeds, clipped to each "
            "metric's range (every metric is >= 0; F-scores, IoUs and fractions are <= 1; eval.json "
            "keeps the unclipped interval); NaN samples (an empty generation has no Chamfer) are "
            "left out of the mean and counted in eval.json."]
    if "ceiling" in results or "chance" in results:
        text += ["", REFERENCES_TEXT]
    text += skipped_lines(results)
    if condition_gap is not None:
        text += ["", *condition_gap_lines(condition_gap)]
    if grid is not None and not results[grid[0]].rows:
        grid = None  # every view skipped: no case to show
    if grid is not None:
        text += ["", "![best and worst cases](cases.png)"]
    write_text(out / "eval.md", "\n".join(text) + "\n")
    if grid is not None:
        name, dataset = grid
        cases_png(out / "cases.png", results[name], dataset)
    return out / "eval.md"


def skipped_lines(results: dict[str, EvalResult], limit: int = 20) -> list[str]:
    """Markdown naming the held-out views each result skipped and the file that made it skip."""
    if not any(r.skipped for r in results.values()):
        return []
    lines = ["", "## Skipped views", "",
             "Views whose files could not be read; the means above are over the rest."]
    for name, result in results.items():
        if result.skipped:
            lines += ["", f"**{name}**: {len(result.skipped)} held-out view(s) skipped", ""]
            lines += [f"- {item}: {why}" for item, why in list(result.skipped.items())[:limit]]
            if len(result.skipped) > limit:
                lines.append(f"- ... and {len(result.skipped) - limit} more (all in eval.json)")
    return lines


def cases_png(path: Path, result: EvalResult, dataset: str | Path, count: int = 4) -> Path:
    """The ``count`` worst and best samples by ``RANK_KEY``: condition image, the generation
    from the condition view and from the opposite side, the ground truth from the opposite side;
    each row is labelled worst / best with its score. A ground truth that cannot be read is drawn
    blank, with a warning naming its file."""
    import warnings

    from vilearn.data.preview import both_sides, opposite_camera, render_mesh, write_grid

    data = PreparedDataset(dataset)
    ranked = sorted(result.rows, key=lambda r: r.get(RANK_KEY, -1.0))
    if len(ranked) > 2 * count:
        chosen = ranked[:count] + ranked[-count:]
        ranks = [f"worst {i + 1}" for i in range(count)] + [f"best {count - i}" for i in range(count)]
    else:
        chosen = ranked
        ranks = [f"rank {len(ranked) - i} of {len(ranked)}" for i in range(len(ranked))]
    labels = [f"{rank}: {RANK_KEY} {row.get(RANK_KEY, math.nan):.3f}" for rank, row in zip(ranks, chosen)]
    rows = []
    for row in chosen:
        shape_id, view = row["id"], row["view"]
        camera, image = data.camera(shape_id, view), data.image(shape_id, view)
        mesh = result.meshes[(shape_id, view, row["seed"])]
        try:
            truth = data.mesh(shape_id)
            truth_image = render_mesh(truth["vertices"], truth["faces"], opposite_camera(camera),
                                      truth["face_colors"])
        except UNREADABLE as error:
            warnings.warn(f"cases.png: {shape_id}'s ground truth left blank: {error}", stacklevel=2)
            truth_image = np.full_like(image, 255)
        rows.append([image, *both_sides(mesh.verts, mesh.faces, camera), truth_image])
    titles = ["condition", "generated (view)", "generated (opposite)", "truth (opposite)"]
    return write_grid(path, rows, titles, row_labels=labels)
