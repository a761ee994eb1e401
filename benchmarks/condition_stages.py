"""Which image tokens condition best: the baseline (``vape: none``) trained on a benchmark's
dataset with each choice of condition, side by side, scored by how much it reads the image.

    PYTHONPATH=src python benchmarks/condition_stages.py --config bench-furniture \\
        --out runs/bench-furniture [--choices patch,stage4,stage5,stage6,head,stage5+head]
        [--steps 1000] [--seed 0] [--views 64] [--results FILE.md] [key=value ...]

Every choice trains the same tiny MM-DiT on the same data order and seed for ``--steps`` steps,
then scores its EMA weights with ``Validator.condition_gap`` (the held-out flow loss with each
view's own condition, another object's and the null one, fixed noise and timesteps, true VST) on
``--views`` held-out views. ``patch`` is the small patch encoder trained jointly from scratch
(the project's offline default before the pretrained encoders); every other choice is a frozen
ImageNet EfficientNet-Lite0's feature maps at the benchmark config's image size, cached once
(``vilearn cache-features``): ``stage5`` is the 14x14 map at 224 px (112 channels), ``stage6`` /
``head`` the 7x7 maps (192 / 1280 channels), ``a+b`` concatenates both maps' tokens. The
dataset is the benchmark's own (``OUT/dataset``, built by ``vilearn bench convergence`` or here).
Prints one row per choice with the gap relative to the first row.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import time
from pathlib import Path

import torch

from vilearn.bench.convergence import BenchConfig, train_config
from vilearn.bench.data import build_dataset, cache_condition_features, resolve_vae_path
from vilearn.bench.evaluate import measure_condition_gap
from vilearn.config import load_config
from vilearn.dit.conditioner import ConditionerConfig, ImageConditioner
from vilearn.train.loading import load_trained
from vilearn.train.trainer import train


def choice_overrides(choice: str, image_size: int) -> list[str]:
    """Train-config overrides for one condition choice (``patch`` or EfficientNet-Lite0 maps)."""
    if choice == "patch":
        return ["conditioner={kind: patch, image_size: 64, patch_size: 8, width: 64, depth: 2, "
                "num_heads: 4, drop_prob: 0.1}", "model.context_in_dim=64"]
    features = choice.split("+")
    config = ConditionerConfig(kind="efficientnet-lite0", features=features, image_size=image_size)
    width = ImageConditioner(config).out_dim
    return [f"conditioner={{kind: efficientnet-lite0, features: [{', '.join(features)}], "
            f"image_size: {image_size}, cached: true, drop_prob: 0.1}}", f"model.context_in_dim={width}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="bench-furniture", help="a BenchConfig (file or packaged name)")
    parser.add_argument("--out", type=Path, required=True, help="the benchmark's folder (its dataset)")
    parser.add_argument("--choices", default="patch,stage4,stage5,stage6,head,stage5+head")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=64, help="held-out views scored")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    parser.add_argument("overrides", nargs="*", help="BenchConfig overrides, e.g. data.vae=packaged")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bench = load_config(BenchConfig, args.config, args.overrides)
    d = bench.data
    _, identity = build_dataset(args.out / "dataset", d.source, d.limit, d.prepare, resolve_vae_path(d.vae),
                                d.vae_name, [d.tokens], frame=d.frame)
    bench = dataclasses.replace(bench, steps=args.steps)
    rows = []
    for choice in args.choices.split(","):
        overrides = [*bench.overrides, *choice_overrides(choice, args.image_size)]
        base = dataclasses.replace(bench, overrides=overrides)
        config = train_config(base, args.out, "none", args.seed, identity.key)
        if config.conditioner.cached:
            cache_condition_features(config)
        run = args.out / "stages" / f"{choice}-seed{args.seed}"
        start = time.perf_counter()
        train(config, run, resume="latest")
        seconds = time.perf_counter() - start
        gap = measure_condition_gap(load_trained(run), args.views)
        rows.append((choice, config.conditioner.kind, gap, seconds))
        print(f"{choice}: gap {gap.get('condition_gap_fraction', float('nan')):.2%} of the loss "
              f"({gap.get('loss', float('nan')):.4f}), {seconds:.0f} s", flush=True)
    first = rows[0][2].get("condition_gap", float("nan"))
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    lines = [f"Machine: {platform.machine()} {cpu}, {torch.get_num_threads()} torch thread(s), "
             f"torch {torch.__version__}.",
             f"Command: `PYTHONPATH=src python benchmarks/condition_stages.py --config {args.config} "
             f"--out {args.out} --choices {args.choices} --steps {args.steps} --seed {args.seed} "
             f"--views {args.views}{''.join(' ' + o for o in args.overrides)}`", "",
             f"`vape: none`, {args.steps} steps of batch {bench.batch_size} at {d.tokens} tokens, seed "
             f"{args.seed}; condition gap on {args.views} held-out views (EMA weights).", "",
             "| condition | loss, own | another object's | null | gap | gap / loss | gap vs first row | "
             "train time |", "|---|---|---|---|---|---|---|---|"]
    for choice, kind, gap, seconds in rows:
        if "condition_gap" not in gap:
            lines.append(f"| {choice} ({kind}) | {gap.get('loss', '-')} | - | - | - | - | - | "
                         f"{seconds:.0f} s |")
            continue
        lines.append(f"| {choice} ({kind}) | {gap['loss']:.4f} | {gap['loss_other']:.4f} | "
                     f"{gap['loss_null']:.4f} | {gap['condition_gap']:.4f} | "
                     f"{gap['condition_gap_fraction']:.2%} | {gap['condition_gap'] / first:.1f}x | "
                     f"{seconds:.0f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        args.results.write_text(text)


if __name__ == "__main__":
    main()
