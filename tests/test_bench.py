"""Evaluation end to end on a tiny run, the speed-up arithmetic on synthetic curves, and a
miniature convergence benchmark."""

import json
import math

import numpy as np
import pytest
import yaml

from vilearn.bench.speedup import speedup, steps_to_reach


def test_steps_to_reach_interpolates_the_first_crossing():
    steps = [100, 200, 300, 400]
    assert steps_to_reach(steps, [0.1, 0.3, 0.5, 0.4], 0.4, higher_is_better=True) == pytest.approx(250)
    assert steps_to_reach(steps, [1.0, 0.8, 0.6, 0.2], 0.7, higher_is_better=False) == pytest.approx(250)
    assert steps_to_reach(steps, [0.9, 1.0, 1.0, 1.0], 0.5, higher_is_better=True) == 100
    assert steps_to_reach(steps, [0.1, 0.2, 0.2, 0.3], 0.5, higher_is_better=True) is None


def test_speedup_of_a_curve_twice_as_fast_is_two():
    steps = np.arange(1, 11) * 100.0
    baseline = 1 - np.exp(-steps / 400)  # reaches its final value late
    faster = 1 - np.exp(-2 * steps / 400)  # the same curve at twice the rate
    result = speedup(steps, baseline, faster, higher_is_better=True, average_last=1)
    assert result["target"] == pytest.approx(baseline[-1])
    assert result["baseline_steps"] == pytest.approx(1000)
    # the variant reaches baseline[-1] = 1 - e^-2.5 exactly at step 500, between checkpoints
    # its linear interpolation is within a few steps of that
    assert result["variant_steps"] == pytest.approx(500, abs=10)
    assert result["speedup"] == pytest.approx(2.0, rel=0.03)


def test_speedup_not_reached_and_lower_is_better():
    steps = [1, 2, 3, 4]
    assert speedup(steps, [4, 3, 2, 1], [4, 4, 4, 4], higher_is_better=False)["speedup"] is None
    result = speedup(steps, [4.0, 3.0, 2.0, 1.0], [2.0, 1.0, 0.5, 0.5], False, average_last=2)
    assert result["target"] == 1.5
    assert result["baseline_steps"] == pytest.approx(3.5)
    assert result["variant_steps"] == pytest.approx(1.5)
    assert result["speedup"] == pytest.approx(3.5 / 1.5)


def test_chance_to_ceiling_is_the_share_of_the_way_for_both_directions():
    from vilearn.bench.convergence import chance_to_ceiling

    refs = {"chance": {"iou": 0.2, "chamfer_l1": 0.18}, "ceiling": {"iou": 0.8, "chamfer_l1": 0.04}}
    assert chance_to_ceiling(0.4, refs, "iou") == pytest.approx(1 / 3)
    assert chance_to_ceiling(0.11, refs, "chamfer_l1") == pytest.approx(0.5)  # lower is better
    assert chance_to_ceiling(0.1, refs, "iou") == pytest.approx(-1 / 6)  # below chance
    assert math.isnan(chance_to_ceiling(0.5, refs, "components"))  # no reference: unknown
    close = {"chance": {"components": 5.55}, "ceiling": {"components": 5.665}}
    assert math.isnan(chance_to_ceiling(4.3, close, "components"))  # no room between them


def test_evaluate_end_to_end_on_a_tiny_run(encoded, encoded_key, tmp_path):
    from typer.testing import CliRunner

    from vilearn.cli import app
    from vilearn.config import load_config
    from vilearn.train.config import TrainConfig
    from vilearn.train.trainer import train

    config = load_config(TrainConfig, "dit-tiny", [
        f"dataset={encoded / 'data'}", f"vae={encoded / 'vae'}", "vae_name=vae", "model.in_channels=8",
        "stages=[{tokens: 32, steps: 2, batch_size: 2}]", "val.every=0",
        "conditioner={kind: patch, image_size: 32, patch_size: 16, width: 64, depth: 1, num_heads: 4}",
    ])
    train(config, tmp_path / "run")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--n", "2", "--seeds", "0,1",
                                      "--steps", "2", "--resolution", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert set(report) == {"model", "ceiling", "chance", "condition_gap"}
    gap = report["condition_gap"]  # the tiny dataset holds out one object: own and null only
    assert gap["views"] >= 1 and isinstance(gap["loss_null"], float) and "single object" in gap["note"]
    assert "## Condition gap" in (out / "eval.md").read_text()
    rows = report["model"]["rows"]
    assert len(rows) == 4 and {r["seed"] for r in rows} == {0, 1}
    # the ceiling decodes each shape's own latents: same shapes and views as the model rows
    assert {(r["id"], r["view"]) for r in report["ceiling"]["rows"]} == {(r["id"], r["view"]) for r in rows}
    assert {r["source"] for r in report["chance"]["rows"]} <= {r["id"] for r in rows} | set(
        p.stem for p in (encoded / "data" / "latents" / encoded_key / "32").glob("*.safetensors"))
    assert "fscore@0.05" in (out / "eval.md").read_text() and (out / "cases.png").is_file()
    iou = report["model"]["summary"]["iou"]
    assert 0.0 <= iou["mean"] <= 1.0 or math.isnan(iou["mean"])


@pytest.mark.slow
def test_a_miniature_convergence_benchmark(encoded, tmp_path):
    from vilearn.bench.convergence import BenchConfig, run_benchmark
    from vilearn.config import load_config

    prepare = tmp_path / "prepare.yaml"
    prepare.write_text("surface_points: 2048\nuniform_points: 1024\nnear_points: 1024\nval_fraction: 0.6\n"
                       "views: {count: 2, image_size: 64, visible_points: 512}\n")
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"limit": 6, "prepare": str(prepare), "vae": str(encoded / "vae"), "tokens": 32,
                 "frame": "view"},
        "overrides": ["val.every=2", "train.ckpt_every=2",
                      "conditioner={kind: patch, image_size: 32, patch_size: 16, width: 64, depth: 1, "
                      "num_heads: 4}"],
        "variants": ["none", "va-rope-random"], "seeds": [0], "steps": 4, "batch_size": 2,
        "eval_every": 2, "eval": {"n": 2, "steps": 2, "resolution": 32, "points": 2000},
        "metrics": ["fscore@0.05", "chamfer_l1"],
    }))
    bench = load_config(BenchConfig, path)
    report = run_benchmark(bench, tmp_path / "out", say=lambda text: None)
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["step"]) for r in records} == {
        ("none", 2), ("none", 4), ("va-rope-random", 2), ("va-rope-random", 4)}
    # view frame: the run trained and scored one shape per (shape, view) of the prepared data
    from vilearn.data.dataset import PreparedDataset

    object_ids = PreparedDataset(tmp_path / "out" / "dataset-object").ids()
    assert sorted(PreparedDataset(tmp_path / "out" / "dataset").ids()) == sorted(
        f"{i}~{k}" for i in object_ids for k in range(2))
    text = report.read_text()
    assert "| fscore@0.05 | va-rope-random |" in text and "Chance and ceiling" in text
    assert (tmp_path / "out" / "curve-fscore_0.05.png").is_file()
    # summary.json: the final metrics are the last evaluation's, the speed-ups the curves' (paired
    # by seed), and the condition gap the last validation record's
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["steps"] == 4 and set(summary["chance"]) >= {"fscore@0.05", "chamfer_l1"}
    runs = {(r["variant"], r["seed"]): r for r in summary["runs"]}
    assert set(runs) == {("none", 0), ("va-rope-random", 0)}
    final = {r["variant"]: r["means"] for r in records if r["step"] == 4}
    for (variant, _), run in runs.items():
        assert run["metrics"] == pytest.approx(final[variant], nan_ok=True)
        log = [json.loads(line) for line in
               (tmp_path / "out" / "runs" / f"{variant}-seed0" / "log.jsonl").read_text().splitlines()]
        last = [r for r in log if r.get("split") == "val" and "loss" in r][-1]
        assert run["condition_gap"]["absolute"] == pytest.approx(last["condition_gap"])
        assert run["condition_gap"]["fraction"] == pytest.approx(last["condition_gap_fraction"])
        chance, ceiling = summary["chance"]["fscore@0.05"], summary["ceiling"]["fscore@0.05"]
        share = run["chance_to_ceiling"]["fscore@0.05"]
        if abs(ceiling - chance) <= 0.05 * max(abs(chance), abs(ceiling)):
            assert share is None  # no room between chance and ceiling: no share (NaN, stored as null)
        else:
            assert share == pytest.approx((final[variant]["fscore@0.05"] - chance) / (ceiling - chance))
    from vilearn.bench.speedup import speedup

    curve = {v: [r["means"]["fscore@0.05"] for r in sorted(records, key=lambda r: r["step"])
                 if r["variant"] == v] for v in ("none", "va-rope-random")}
    expected = speedup([2, 4], curve["none"], curve["va-rope-random"], True, bench.average_last)["speedup"]
    assert runs[("va-rope-random", 0)]["speedup"]["fscore@0.05"] == pytest.approx(expected, nan_ok=True)
    assert "## Condition gap" in text and (tmp_path / "out" / "curve-condition-gap.png").is_file()
    # a second call finds everything done and only redraws the report
    run_benchmark(bench, tmp_path / "out", say=lambda text: None)
    again = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(again) == len(records)
    # the inference partition follows the visible-token fraction measured on the stored groups
    from vilearn.bench.convergence import train_config

    (latents,) = (tmp_path / "out" / "dataset" / "latents").iterdir()  # bench-vae-<hash8>
    key = latents.name
    assert key.startswith("bench-vae-") and (latents / "vae.json").is_file()
    groups = sorted(latents.glob("32/groups/*.npz"))
    visible = np.concatenate([np.load(g)["visible"] for g in groups])  # (views, 32) bool
    nonempty = visible.any(axis=1)
    expected = visible[nonempty].mean()
    ratio = train_config(bench, tmp_path / "out", "none", 0, key).model["visible_ratio"]
    assert abs(ratio - expected) < 1e-9 and abs(ratio - 1 / 3) > 1e-3
    # the view frame trains on uncropped condition images (their framing is the object's size)
    assert train_config(bench, tmp_path / "out", "none", 0, key).conditioner.crop is False
    # bench-gpu's overrides replace whole sections (model, conditioner): the channels of the
    # stored latents, the measured partition and the uncropped view still reach the run
    import dataclasses

    from safetensors.numpy import load_file

    gpu = load_config(BenchConfig, "bench-gpu")
    wide = train_config(dataclasses.replace(bench, overrides=gpu.overrides), tmp_path / "out", "va-rope", 0,
                        key)
    latent = next((tmp_path / "out" / "dataset").glob("latents/*/32/*.safetensors"))
    assert wide.model["in_channels"] == load_file(str(latent))["mean"].shape[-1]
    assert wide.model["hidden_size"] == 384 and abs(wide.model["visible_ratio"] - expected) < 1e-9
    assert wide.conditioner.crop is False and wide.conditioner.image_size == 128


def test_bench_config_names_a_bad_frame(tmp_path):
    from vilearn.bench.convergence import BenchConfig
    from vilearn.config import ConfigError, load_config

    path = tmp_path / "bench.yaml"
    path.write_text("data: {frame: side}\n")
    with pytest.raises((ConfigError, ValueError), match="frame.*side"):
        load_config(BenchConfig, path)


@pytest.mark.parametrize("name", ["bench-furniture", "bench-furniture-gpu"])
def test_the_furniture_benchmarks_feed_the_dit_the_width_their_encoder_gives(name):
    from vilearn.bench.convergence import BenchConfig
    from vilearn.bench.data import resolve_vae_path
    from vilearn.config import load_config
    from vilearn.dit.conditioner import ImageConditioner
    from vilearn.train.config import TrainConfig
    from vilearn.vae import load_vae

    bench = load_config(BenchConfig, name)
    config = load_config(TrainConfig, bench.train, bench.overrides)
    # EfficientNet-Lite0's sixth MBConv stage ends in 192 channels (its published architecture)
    assert config.conditioner.features == ["stage6"] and config.dit.context_in_dim == 192
    assert ImageConditioner(config.conditioner).out_dim == 192
    vae = load_vae(resolve_vae_path(bench.data.vae))  # the packaged furniture VAE
    assert vae.config.label_type == "tsdf" and vae.config.embed_dim == 32
