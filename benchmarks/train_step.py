"""Training throughput of the diffusion trainer's real ``training_step`` (forward, backward,
AdamW, EMA), side by side for VAPE none vs va-rope vs va-lpe, at two model sizes.

Batches are synthetic (random latents, images and visibility masks of the configured sizes),
so this measures the step itself, not data loading. Variants are interleaved round by round
and medians reported, so other load on the machine hits all of them alike.

Run: python benchmarks/train_step.py [--rounds 8] [--out benchmarks/results/train-step-cpu.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from vilearn.config import from_dict
from vilearn.engine.ema import EMA
from vilearn.flow.normalize import LatentStats
from vilearn.train.config import TrainConfig
from vilearn.train.trainer import build_model, build_optimizer, training_step

SIZES = {
    # name: (model section, conditioner section, tokens, batch)
    "tiny": ({"preset": "tiny"},
             {"kind": "patch", "image_size": 64, "patch_size": 8, "width": 64, "depth": 2, "num_heads": 4},
             64, 16),
    "mid": ({"preset": "tiny", "in_channels": 16, "hidden_size": 256, "num_heads": 4, "depth": 4,
             "depth_single_blocks": 4, "context_in_dim": 128},
            {"kind": "patch", "image_size": 128, "patch_size": 16, "width": 128, "depth": 2, "num_heads": 4},
            256, 8),
}
VARIANTS = ("none", "va-rope", "va-lpe")


def make_step(size: str, vape: str):
    from accelerate import Accelerator

    model_section, conditioner, tokens, batch = SIZES[size]
    config = from_dict(TrainConfig, {
        "model": {**model_section, "vape": vape}, "conditioner": conditioner,
        "stages": [{"tokens": tokens, "steps": 10_000, "batch_size": batch}],
        "optim": {"warmup_steps": 1},
    })
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    ema = EMA(model, 0.999, keys=model.trainable_state().keys())
    accelerator = Accelerator(mixed_precision="no")
    model, optimizer = accelerator.prepare(model, optimizer)
    channels, side = config.dit.in_channels, config.conditioner.image_size
    generator = torch.Generator().manual_seed(1)
    visible = torch.rand(batch, tokens, generator=generator) < 0.4
    data = [{"latents": torch.randn(batch, tokens, channels, generator=generator),
             "image": torch.rand(batch, 3, side, side, generator=generator), "visible": visible,
             "t": torch.rand(batch, generator=generator),  # the per-sample draws of the loader
             "noise": torch.randn(batch, tokens, channels, generator=generator),
             "drop": torch.rand(batch, generator=generator) < config.conditioner.drop_prob}]
    stats = LatentStats.identity(channels)
    counter = iter(range(10**9))

    def step():
        training_step(accelerator, model, optimizer, ema, data, stats, config, next(counter))

    return step, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU"
    lines = ["# Diffusion training step throughput", "",
             f"Command: `python benchmarks/train_step.py --rounds {args.rounds} --threads {args.threads}`",
             "",
             f"Machine: {device}, torch {torch.__version__}, {args.threads} thread(s); fp32; median of "
             f"{args.rounds} interleaved rounds after 2 warm-up steps each.", ""]
    for size in SIZES:
        steps = {vape: make_step(size, vape) for vape in VARIANTS}
        for fn, _ in steps.values():
            fn(), fn()
        times = {vape: [] for vape in VARIANTS}
        for _ in range(args.rounds):
            for vape, (fn, _) in steps.items():
                start = time.perf_counter()
                fn()
                times[vape].append(time.perf_counter() - start)
        model_section, _, tokens, batch = SIZES[size]
        lines += [f"## {size}: {tokens} tokens, batch {batch}, model {model_section}", "",
                  "| vape | ms / step | samples / s | step time / none |", "| --- | --- | --- | --- |"]
        base = statistics.median(times["none"])
        for vape in VARIANTS:
            median = statistics.median(times[vape])
            lines.append(f"| {vape} | {1000 * median:.1f} | {batch / median:.1f} | {median / base:.3f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
