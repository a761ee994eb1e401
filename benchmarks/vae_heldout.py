"""Held-out figures of a VAE on a prepared dataset's whole val split, and its token locality.

    PYTHONPATH=src python benchmarks/vae_heldout.py VAE DATASET [--shapes K] [--tokens 256,64]
        [--no-recon] [--json OUT]

Reconstruction: ``vilearn.vae.validate.validate`` (what ``train-vae`` logs) over every val
shape (or the first K): occupancy IoU on the stored uniform and near-surface points, separately,
and Chamfer-L1 / F-score@0.02 of a 64^3 hierarchical extraction; at each of ``--tokens`` (256 by
default), a posterior sample with seed = shape index, encoder input as in training (2048
surface points).

Locality (first 10 val shapes, 1000 stored surface points each, 256 and 64 tokens, posterior
mean as ``vilearn encode`` stores it): for each point, the distance to the FPS anchor of its
argmax token under the decoder's cross-attention (Visibility Grouping's assignment), next to
the nearest anchor and the mean over all anchors; medians over all points, and how many
distinct tokens are some point's argmax.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vilearn.data.dataset import PreparedDataset
from vilearn.grouping import token_assignment
from vilearn.vae.data import ShapeSampler, load_surface
from vilearn.vae.encode import encode_shape
from vilearn.vae.input import EncoderInput
from vilearn.vae.resolve import resolve_vae
from vilearn.vae.validate import validate


@torch.no_grad()
def locality(vae, root: str, ids: list[str], tokens: int, points: int = 1000) -> dict:
    assigned, nearest, mean, distinct = [], [], [], []
    for index, shape_id in enumerate(ids):
        surface = load_surface(root, shape_id)
        stored = PreparedDataset(root).surface(shape_id)
        latents = encode_shape(vae, stored, [tokens], EncoderInput.of(vae.config))[tokens]
        pick = np.random.default_rng([1, index]).choice(len(surface), points, replace=False)
        pts = torch.from_numpy(surface[pick, :3])
        a = token_assignment(vae.geo_decoder, pts[None], vae.decode(latents["mean"][None]))[0]
        dist = torch.cdist(pts, latents["anchors"])  # (P, N)
        assigned.append(dist[torch.arange(len(pts)), a].numpy())
        nearest.append(dist.min(1).values.numpy())
        mean.append(dist.mean(1).numpy())
        distinct.append(a.unique().numel())
    return {"tokens": tokens, "shapes": len(ids), "points_per_shape": points,
            "argmax_anchor_median": float(np.median(np.concatenate(assigned))),
            "argmax_anchor_mean": float(np.mean(np.concatenate(assigned))),
            "nearest_anchor_median": float(np.median(np.concatenate(nearest))),
            "random_anchor_median": float(np.median(np.concatenate(mean))),
            "distinct_argmax_tokens": float(np.mean(distinct))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vae")
    parser.add_argument("dataset")
    parser.add_argument("--shapes", type=int, default=0, help="0: every val shape")
    parser.add_argument("--locality-shapes", type=int, default=10, help="0: no locality")
    parser.add_argument("--no-recon", action="store_true", help="locality only")
    parser.add_argument("--tokens", default="256", help="token counts of the reconstruction, comma-separated")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = resolve_vae(args.vae).eval()
    sampler = ShapeSampler(args.dataset, "val", 2048, 2048, 0.5, 0)
    shapes = args.shapes or len(sampler)
    recon = []
    for tokens in ([] if args.no_recon else [int(t) for t in args.tokens.split(",")]):
        tic = time.perf_counter()
        row = {"tokens": tokens, **validate(vae, sampler, shapes, tokens, 64, 0.02, 10000)}
        row["seconds"] = time.perf_counter() - tic
        print("reconstruction:", json.dumps(row))
        recon.append(row)
    ids = PreparedDataset(args.dataset).ids("val")[:args.locality_shapes]
    local = [locality(vae, args.dataset, ids, n) for n in (256, 64)] if ids else []
    for row in local:
        print("locality:", json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"vae": args.vae, "reconstruction": recon, "locality": local}, f, indent=1)


if __name__ == "__main__":
    main()
