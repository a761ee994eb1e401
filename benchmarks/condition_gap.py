"""How much a trained diffusion run uses its condition image: held-out flow loss with each view's
own image against the same loss with another held-out view's image (the images rolled by one).

    PYTHONPATH=src python benchmarks/condition_gap.py RUN [RUN ...] [--shapes 64]

Same fixed timesteps, noise and latents as training's validation (``Validator.flow_loss``), EMA
weights, the true VST. A model that reads the image has a clearly lower loss with its own; equal
losses mean the image is ignored, and generation can be no better than chance.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from vilearn.train.loading import load_trained
from vilearn.train.validation import Validator


def condition_gap(run: str, shapes: int) -> dict:
    trained = load_trained(run)
    config = dataclasses.replace(trained.config, val=dataclasses.replace(trained.config.val, shapes=shapes))
    from vilearn.train.trainer import resolved_vae_name

    validator = Validator(config, resolved_vae_name(config), trained.stats, out=".")
    model, tokens = trained.model, trained.tokens
    items = validator.held_out(tokens, model.conditioner.image_size, model.conditioner.crop)
    own = validator.flow_loss(model, items, trained.stats[tokens], fixed_partition=False)
    images = [item["image"] for item in items]
    rolled = [{**item, "image": images[(i + 1) % len(items)]} for i, item in enumerate(items)]
    other = validator.flow_loss(model, rolled, trained.stats[tokens], fixed_partition=False)
    return {"run": run, "step": trained.step, "items": len(items), "loss_own_image": round(own, 4),
            "loss_other_image": round(other, 4), "gap": round(other - own, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--shapes", type=int, default=64, help="held-out views to score")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run | step | views | loss, own image | loss, another view's image | gap |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        r = condition_gap(run, args.shapes)
        print(f"| {r['run']} | {r['step']} | {r['items']} | {r['loss_own_image']} | "
              f"{r['loss_other_image']} | {r['gap']} |")


if __name__ == "__main__":
    main()
