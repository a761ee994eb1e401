"""Samples/s of the diffusion trainer's loader against what a step of the config it feeds consumes.

Builds a small dataset (random_urdfs with the benchmark's prepare settings: 224 px views,
the packaged tiny VAE at 64 and 256 tokens), then measures, side by side in one run, for each
config the rows feed (``dit-tiny``; ``bench-cpu`` and ``bench-gpu`` as ``vilearn bench
convergence`` trains them; ``paper-0.39b``):

- the loader exactly as ``vilearn train`` builds it (``LatentViewDataset`` with the per-sample
  flow draws, ``StepBatches``, the trainer's ``_loader``) with W = 0 (in this process: one
  worker's rate), 1 and 2 worker processes, at the config's tokens, batch, image size and crop:
  the condition image prepared on the fly from the view's PNG and mask (the path before
  ``vilearn cache-images``) and the same image read from the cache; for paper-0.39b, cached
  DINOv2-giant features (1370 x 1536 float16 per view at 518 px; random values of the real
  size: reading is what is timed), at the dataset's 256 tokens and its last stage's batch of 64;
- where one item's time goes (latents, grouping, condition, flow draws), in this process;
- what a step of that config consumes: samples per step / step time of the trainer's
  ``training_step`` on batches from the loader, fp32, on this CPU, and the ratio loader / step
  in each row against its own config's step. dit-tiny and bench-cpu are timed at their real
  size; bench-gpu's and paper-0.39b's steps would take minutes here, so they are timed at toy
  size (width 64, one double and one single block; paper-0.39b also at batch 8) on the same
  data: a toy step consumes faster than the real one, so their ratio is a lower bound;
- how many workers, at the measured one-worker rate, feed each config's GPU demand (samples/s a
  GPU step consumes, ``--gpu-demand CONFIG=RATE,...``; bench-gpu's 634 was measured on an H200;
  this CPU's cores, not the GPU machine's).

    python benchmarks/loader.py [--shapes 32] [--batches 12] [--workers 0,1,2] [--rounds 8]
        [--gpu-demand bench-gpu=634] [--work /tmp/vilearn-bench-loader] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from gpu_throughput import TOY_MODEL, stand_in_dinov2
from vilearn.bench.data import PACKAGED_VAE, build_dataset
from vilearn.config import apply_overrides, from_dict, load_config, to_dict
from vilearn.data.dataset import PreparedDataset
from vilearn.io import save_safetensors, write_json
from vilearn.train.config import TrainConfig
from vilearn.train.data import LatentViewDataset, StepBatches, flow_draws
from vilearn.train.features import features_dir, features_path, view_key
from vilearn.train.images import cache_images
from vilearn.train.trainer import _loader

FEATURES = ("dinov2-giant-synthetic-518", 1370, 1536)  # name, tokens L_c, width D
CONFIGS = ("dit-tiny", "bench-cpu", "bench-gpu", "paper-0.39b")
# The steps too big for this CPU, timed with these overrides (and described so in the output).
TOY = {"bench-gpu": ([*TOY_MODEL, "conditioner.depth=1"],
                     "toy: width 64, 1 double + 1 single block, patch encoder depth 1"),
       "paper-0.39b": ([*TOY_MODEL, "stages=[{tokens: 256, steps: 100, batch_size: 8}]"],
                       "toy: width 64, 1 double + 1 single block, batch 8")}
GPU_DEMAND = "bench-gpu=634"  # bench-gpu on an H200: benchmarks/results/convergence-gpu-probe.md


def machine() -> str:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu or platform.processor()}, shared: load average {load} at "
            f"the start), torch {torch.__version__}")


def gpu_demand(text: str) -> dict[str, float]:
    """--gpu-demand: ``CONFIG=SAMPLES_PER_S`` pairs, comma-separated; a bare number sets every config."""
    demand = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            raise SystemExit(f"--gpu-demand {text!r}: {part!r} is neither CONFIG=SAMPLES_PER_S "
                             "nor a number") from None
        if name and name not in CONFIGS:
            raise SystemExit(f"--gpu-demand {text!r}: unknown config {name!r} ({', '.join(CONFIGS)})")
        demand.update({config: rate for config in ([name] if name else CONFIGS)})
    return demand


def synthetic_features(root: Path) -> None:
    """Features files of DINOv2-giant's size for every ok shape (what cache-features writes)."""
    name, tokens, width = FEATURES
    folder = features_dir(root, name)
    write_json(folder / "info.json", {"model": "synthetic", "image_size": 518, "tokens": tokens,
                                      "width": width, "dtype": "float16", "crop": True})
    generator = torch.Generator().manual_seed(0)
    for row in PreparedDataset(root).rows():
        path = features_path(root, name, row["id"])
        if not path.is_file():
            views = {view_key(k): torch.randn(tokens, width, generator=generator).half()
                     for k in range(row["views"])}
            save_safetensors(path, views, metadata={"views": str(row["views"])})


def train_configs(root: Path, key: str, work: Path) -> dict[str, TrainConfig]:
    """The training config each row feeds, as it is trained: dit-tiny as packaged, the two
    convergence benchmarks as ``vilearn bench convergence`` builds them (``train_config``: their
    overrides, tokens, batch and framing), paper-0.39b with cached features through a stand-in
    DINOv2-giant (never run) and the packaged VAE's 32 latent channels."""
    from vilearn.bench.convergence import BenchConfig, train_config

    data = [f"dataset={root}", f"vae={PACKAGED_VAE}", "vae_name=bench-vae"]
    configs = {"dit-tiny": load_config(TrainConfig, "dit-tiny", data)}
    for name in ("bench-cpu", "bench-gpu"):  # train_config reads OUT/dataset: root
        configs[name] = train_config(load_config(BenchConfig, name), root.parent, "va-rope", 0, key)
    encoder = stand_in_dinov2(work / "dinov2-stand-in-518", FEATURES[2], 518)
    configs["paper-0.39b"] = load_config(TrainConfig, "paper-0.39b", [
        *data, "model.in_channels=32", f"conditioner.model={encoder}", "conditioner.cached=true",
        "stages=[{tokens: 256, steps: 100, batch_size: 64}]"])
    return configs


def condition(config: TrainConfig) -> str:
    c = config.conditioner
    if c.cached:
        return f"DINOv2-giant features {FEATURES[1]} x {FEATURES[2]} fp16"
    return f"{c.image_size} px image, {'cropped' if c.crop else 'uncropped'}"


def dataset(root: Path, key: str, config: TrainConfig, want_cache: bool, cached: set) -> LatentViewDataset:
    """The config's training data; ``want_cache``: its condition images read from the image
    cache (made here once per size and crop), else prepared on the fly."""
    c, tokens = config.conditioner, config.stages[0].tokens
    if want_cache and (c.image_size, c.crop) not in cached:
        cache_images(root, c.image_size, c.crop)
        cached.add((c.image_size, c.crop))
    data = LatentViewDataset(root, key, tokens, "train", c.image_size,
                             features=FEATURES[0] if c.cached else None, crop=c.crop,
                             timesteps=config.timesteps, drop_prob=c.drop_prob)
    if not want_cache:
        data.ready = set()  # the on-the-fly path, even where a cache exists
    return data


def loader_rate(data: LatentViewDataset, batch: int, workers: int, batches: int, prefetch: int) -> float:
    """Samples/s of the trainer's loader after its first batch (workers started, warm)."""
    sampler = StepBatches(len(data), batch, 1, seed=0, stage=0, start=0, stop=batches + 1)
    stream = _loader(data, sampler, workers, seed=0, prefetch=prefetch)
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - start)


def item_breakdown(data: LatentViewDataset, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per item of each part of ``LatentViewDataset.__getitem__``, in this process."""
    from safetensors import safe_open

    from vilearn.grouping.store import groups_path

    keys = [(i % len(data), i) for i in range(len(data) * repeats)]
    parts = {"latents": 0.0, "grouping": 0.0, "condition": 0.0, "flow draws": 0.0, "whole item": 0.0}
    for index, seed in keys:
        shape_id, views = data.items[index]
        view = int(views[seed % len(views)])
        clock = time.perf_counter()
        with safe_open(str(data.folder / f"{shape_id}.safetensors"), "np") as latent:
            z = latent.get_tensor("mean") + latent.get_tensor("logvar")
        parts["latents"] += time.perf_counter() - clock
        clock = time.perf_counter()
        with np.load(groups_path(data.data.root, data.vae_name, data.tokens, shape_id)) as groups:
            groups["visible"][view]
        parts["grouping"] += time.perf_counter() - clock
        clock = time.perf_counter()
        if data.features is not None:
            from vilearn.train.features import read_view_features

            read_view_features(features_path(data.data.root, data.features, shape_id), view)
        else:
            data.condition_image(shape_id, view)
        parts["condition"] += time.perf_counter() - clock
        clock = time.perf_counter()
        flow_draws(seed, z.shape, data.timesteps, data.drop_prob)
        parts["flow draws"] += time.perf_counter() - clock
        clock = time.perf_counter()
        data[index, seed]
        parts["whole item"] += time.perf_counter() - clock
    return {k: 1000 * v / len(keys) for k, v in parts.items()}


def step_rate(root: Path, key: str, config: TrainConfig, rounds: int) -> tuple[float, int]:
    """(samples/s, samples per step) of ``training_step`` for ``config`` on this CPU, fp32."""
    from accelerate import Accelerator

    from vilearn.engine.ema import EMA
    from vilearn.flow.normalize import LatentStats
    from vilearn.train.trainer import build_model, build_optimizer, training_step

    stage = config.stages[0]
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    ema = EMA(model, config.train.ema_decay, keys=model.trainable_state().keys())
    model, optimizer = accelerator.prepare(model, optimizer)
    data = dataset(root, key, config, want_cache=False, cached=set())
    sampler = StepBatches(len(data), stage.batch_size, 1, 0, 0, 0, rounds + 2)
    batches = list(_loader(data, sampler, 0, seed=0))  # read first: only the step is timed
    stats = LatentStats.load(root / "latents" / key / str(stage.tokens) / "stats.json")
    times = []
    for step, batch in enumerate(batches):
        clock = time.perf_counter()
        training_step(accelerator, model, optimizer, ema, [batch], stats, config, step)
        times.append(time.perf_counter() - clock)
    median = statistics.median(times[2:])  # two warm-up steps
    return stage.batch_size / median, stage.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=8, help="timed training steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--gpu-demand", default=GPU_DEMAND,
                        help="samples/s a GPU step of each config consumes: CONFIG=RATE,... (a bare "
                             "number: every config) [bench-gpu=634: bench-gpu on an H200, "
                             "benchmarks/results/convergence-gpu-probe.md]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vilearn-bench-loader"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    demand = gpu_demand(args.gpu_demand)
    torch.set_num_threads(args.threads)
    root = args.work / "dataset"
    _, identity = build_dataset(root, "pybullet:random_urdfs", args.shapes, "prepare-bench", PACKAGED_VAE,
                                "bench-vae", [64, 256], workers=os.cpu_count() or 1, say=lambda _: None)
    key = identity.key
    synthetic_features(root)
    configs = train_configs(root, key, args.work)
    workers = [int(w) for w in args.workers.split(",")]
    steps, sizes = {}, {}
    for name, config in configs.items():
        overrides, sizes[name] = TOY.get(name, ([], "real"))
        timed = from_dict(TrainConfig, apply_overrides(to_dict(config), overrides)) if overrides else config
        steps[name] = step_rate(root, key, timed, args.rounds)
    lines = ["# Training loader throughput against what a step consumes", "",
             f"Command: `python benchmarks/loader.py --shapes {args.shapes} --batches {args.batches} "
             f"--workers {args.workers} --rounds {args.rounds} --threads {args.threads} "
             f"--gpu-demand {args.gpu_demand}`", "",
             f"Machine: {machine()}; {args.threads} torch thread(s) in the measuring process; "
             f"{args.shapes} random_urdfs shapes, 4 views of 224 px (prepare-bench), packaged tiny VAE.",
             "", "## What a step of each config consumes (this CPU, fp32, training_step only)", "",
             "Too big for this CPU, bench-gpu and paper-0.39b are timed at toy size on their real "
             "data (tokens, condition; bench-gpu's batch): their ratios below are lower bounds.", "",
             "| config | model timed | samples / step | step ms | samples / s |",
             "| --- | --- | --- | --- | --- |"]
    for name, (rate, batch) in steps.items():
        lines.append(f"| {name} | {sizes[name]} | {batch} | {1000 * batch / rate:.1f} | {rate:.1f} |")
    header = " | ".join(f"W={w} samples/s" for w in workers)
    lines += ["", "## Loader samples/s (W = worker processes; W=0 runs in this process)", "",
              f"| config | condition | tokens | batch | {header} | W={workers[-1]} / its config's step | "
              "GPU demand / s | workers for it |",
              "| --- | --- | --- | --- |" + " --- |" * (len(workers) + 3)]
    cached: set = set()
    breakdowns = {}
    for name, config in configs.items():
        for want_cache in ([False] if config.conditioner.cached else [False, True]):
            data = dataset(root, key, config, want_cache, cached)
            batch = config.stages[0].batch_size
            rates = [loader_rate(data, batch, w, args.batches, config.train.prefetch_factor) for w in workers]
            label = condition(config) + ("" if config.conditioner.cached else
                                         ", cached" if want_cache else ", on the fly")
            breakdowns[f"{name}: {label}"] = item_breakdown(data)
            per_worker = rates[workers.index(1)] if 1 in workers else rates[0]
            need = (f"{demand[name]:g} | {math.ceil(demand[name] / per_worker)}" if name in demand
                    else "n/a | n/a")
            lines.append(f"| {name} | {label} | {config.stages[0].tokens} | {batch} | "
                         + " | ".join(f"{r:.0f}" for r in rates)
                         + f" | {rates[-1] / steps[name][0]:.2f} | {need} |")
    parts = list(next(iter(breakdowns.values())))
    lines += ["", "## Where one item's time goes (ms, in this process)", "",
              "| condition | " + " | ".join(parts) + " |", "| --- |" + " --- |" * len(parts)]
    for name, parts_ms in breakdowns.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in parts_ms.values()) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
