"""Samples/s of the diffusion trainer's loader against what a training step consumes.

Builds a small dataset (random_urdfs with the benchmark's prepare settings: 224 px views,
the packaged tiny VAE at 64 and 256 tokens), then measures, side by side in one run:

- the loader exactly as ``vilearn train`` builds it (``LatentViewDataset`` with the per-sample
  flow draws, ``StepBatches``, the trainer's ``_loader``) with W = 0 (in this process: one
  worker's rate), 1 and 2 worker processes, for three conditions: the condition image prepared
  on the fly from the view's PNG and mask (the path before ``vilearn cache-images``), the same
  image read from the cache, and cached DINOv2-giant features (1370 x 1536 float16 per view,
  the paper configs' frozen encoder at 518 px; random values of the real size: reading is what
  is timed);
- where one item's time goes (latents, grouping, condition, flow draws), in this process;
- what a step consumes: samples per step / step time of ``dit-tiny`` and ``bench-cpu`` (the
  trainer's ``training_step`` on batches from the loader, fp32), and the ratio loader / step;
  and how many workers at the measured one-worker rate feed ``--gpu-demand`` samples/s (what
  bench-gpu consumed on an H200; this CPU's cores, not the GPU machine's).

    python benchmarks/loader.py [--shapes 32] [--batches 12] [--workers 0,1,2] [--gpu-demand 634]
        [--work /tmp/vilearn-bench-loader] [--out FILE]
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

from vilearn.bench.data import PACKAGED_VAE, build_dataset
from vilearn.config import load_config
from vilearn.data.dataset import PreparedDataset
from vilearn.flow.timesteps import TimestepConfig
from vilearn.io import save_safetensors, write_json
from vilearn.train.data import LatentViewDataset, StepBatches, flow_draws
from vilearn.train.features import features_dir, features_path, view_key
from vilearn.train.images import cache_images
from vilearn.train.trainer import _loader

FEATURES = ("dinov2-giant-synthetic-518", 1370, 1536)  # name, tokens L_c, width D
CASES = {  # name: (tokens, batch, image size, crop, features folder, read the image cache)
    "dit-tiny / bench-cpu image (64 px, cropped), on the fly": (64, 16, 64, True, None, False),
    "dit-tiny / bench-cpu image (64 px, cropped), cached": (64, 16, 64, True, None, True),
    "bench-gpu image (128 px, uncropped), on the fly": (256, 64, 128, False, None, False),
    "bench-gpu image (128 px, uncropped), cached": (256, 64, 128, False, None, True),
    "paper features (DINOv2-giant 1370 x 1536 fp16)": (256, 64, 518, True, FEATURES[0], False),
}


def machine() -> str:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu or platform.processor()}, shared: load average {load} at "
            f"the start), torch {torch.__version__}")


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


def dataset(root: Path, key: str, case: tuple, cached: set) -> LatentViewDataset:
    tokens, _, size, crop, features, want_cache = case
    if want_cache and (size, crop) not in cached:
        cache_images(root, size, crop)
        cached.add((size, crop))
    data = LatentViewDataset(root, key, tokens, "train", size, features=features, crop=crop,
                             timesteps=TimestepConfig(), drop_prob=0.1)
    if not want_cache:
        data.ready = set()  # the on-the-fly path, even where a cache exists
    return data


def loader_rate(data: LatentViewDataset, batch: int, workers: int, batches: int) -> float:
    """Samples/s of the trainer's loader after its first batch (workers started, warm)."""
    sampler = StepBatches(len(data), batch, 1, seed=0, stage=0, start=0, stop=batches + 1)
    stream = _loader(data, sampler, workers)
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


def step_rate(root: Path, key: str, config_name: str, overrides: list[str],
              rounds: int) -> tuple[float, int]:
    """(samples/s, samples per step) of ``training_step`` for a packaged config on this CPU."""
    from accelerate import Accelerator

    from vilearn.engine.ema import EMA
    from vilearn.flow.normalize import LatentStats
    from vilearn.train.config import TrainConfig
    from vilearn.train.trainer import build_model, build_optimizer, training_step

    config = load_config(TrainConfig, config_name,
                         [f"dataset={root}", f"vae={PACKAGED_VAE}", "vae_name=bench-vae", *overrides])
    stage = config.stages[0]
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    ema = EMA(model, config.train.ema_decay, keys=model.trainable_state().keys())
    model, optimizer = accelerator.prepare(model, optimizer)
    data = LatentViewDataset(root, key, stage.tokens, "train", config.conditioner.image_size,
                             crop=config.conditioner.crop, timesteps=config.timesteps,
                             drop_prob=config.conditioner.drop_prob)
    sampler = StepBatches(len(data), stage.batch_size, 1, 0, 0, 0, rounds + 2)
    batches = list(_loader(data, sampler, 0))  # read first: only the step is timed
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
    parser.add_argument("--gpu-demand", type=float, default=634.0,
                        help="samples/s a GPU step consumed (bench-gpu on an H200: 634, "
                             "benchmarks/results/convergence-gpu-probe.md)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vilearn-bench-loader"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.work / "dataset"
    _, identity = build_dataset(root, "pybullet:random_urdfs", args.shapes, "prepare-bench", PACKAGED_VAE,
                                "bench-vae", [64, 256], workers=os.cpu_count() or 1, say=lambda _: None)
    key = identity.key
    synthetic_features(root)
    workers = [int(w) for w in args.workers.split(",")]
    steps = {"dit-tiny": step_rate(root, key, "dit-tiny", [], args.rounds),
             "bench-cpu": step_rate(root, key, "dit-tiny", ["conditioner.crop=false", "val.every=500"],
                                    args.rounds)}
    lines = ["# Training loader throughput against what a step consumes", "",
             f"Command: `python benchmarks/loader.py --shapes {args.shapes} --batches {args.batches} "
             f"--workers {args.workers} --rounds {args.rounds} --threads {args.threads} "
             f"--gpu-demand {args.gpu_demand:g}`", "",
             f"Machine: {machine()}; {args.threads} torch thread(s) in the measuring process; "
             f"{args.shapes} random_urdfs shapes, 4 views of 224 px (prepare-bench), packaged tiny VAE.",
             "", "## What a step consumes (this CPU, fp32, training_step only)", "",
             "| config | samples / step | step ms | samples / s |", "| --- | --- | --- | --- |"]
    for name, (rate, batch) in steps.items():
        lines.append(f"| {name} | {batch} | {1000 * batch / rate:.1f} | {rate:.1f} |")
    header = " | ".join(f"W={w} samples/s" for w in workers)
    lines += ["", "## Loader samples/s (W = worker processes; W=0 runs in this process)", "",
              f"| condition | tokens | batch | {header} | W={workers[-1]} / dit-tiny step | "
              f"workers for {args.gpu_demand:.0f}/s |",
              "| --- | --- | --- |" + " --- |" * (len(workers) + 2)]
    cached: set = set()
    breakdowns = {}
    for name, case in CASES.items():
        data = dataset(root, key, case, cached)
        rates = [loader_rate(data, case[1], w, args.batches) for w in workers]
        breakdowns[name] = item_breakdown(data)
        ratio = rates[-1] / steps["dit-tiny"][0]
        per_worker = rates[workers.index(1)] if 1 in workers else rates[0]
        lines.append(f"| {name} | {case[0]} | {case[1]} | " + " | ".join(f"{r:.0f}" for r in rates)
                     + f" | {ratio:.2f} | {math.ceil(args.gpu_demand / per_worker)} |")
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
