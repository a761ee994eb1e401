"""How much trained diffusion runs use their condition: held-out flow loss with each view's own
condition, another object's and the null condition, per timestep (``Validator.condition_gap``:
the same measurement training's validation logs and ``vilearn evaluate`` reports).

    PYTHONPATH=src python benchmarks/condition_gap.py RUN [RUN ...] [--views 64] [--split val]

Same fixed timesteps, noise and latents as training's validation, EMA weights, the true VST. Runs
on cached features swap the cached tokens (what they were trained on), runs on images the
images. A model that reads its condition has a clearly lower loss with its own; equal losses mean
the image is ignored, and generation can be no better than chance.
"""

from __future__ import annotations

import argparse

import torch

from vilearn.bench.evaluate import measure_condition_gap
from vilearn.train.loading import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--views", type=int, default=64, help="held-out views to score")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run | step | views | loss, own | loss, another object's | loss, null | gap | gap / loss |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        trained = load_trained(run)
        g = measure_condition_gap(trained, args.views, args.split)
        if "condition_gap" not in g:
            print(f"| {run} | {trained.step} | {g['views']} | {g.get('loss', '-')} | - | - | - | - |")
            continue
        print(f"| {run} | {trained.step} | {g['views']} | {g['loss']:.4f} | {g['loss_other']:.4f} | "
              f"{g['loss_null']:.4f} | {g['condition_gap']:.4f} | {g['condition_gap_fraction']:.2%} |")


if __name__ == "__main__":
    main()
