"""Is the decoder attention local? Mean distance from a visible point to the anchor of its
argmax token, next to the nearest and the average anchor distance (first 6 shapes, view 0,
3000 points each, latents encoded on the fly).

    PYTHONPATH=src python benchmarks/grouping_anchor_distance.py VAE DATASET
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from vilearn.data.dataset import PreparedDataset
from vilearn.grouping import token_assignment
from vilearn.vae.encode import encode_shape
from vilearn.vae.input import EncoderInput
from vilearn.vae.resolve import resolve_vae


@torch.no_grad()
def main(vae_path: str, root: str, shapes: int = 6, points: int = 3000) -> None:
    torch.set_num_threads(1)
    vae = resolve_vae(vae_path)
    data = PreparedDataset(root)
    for n in (64, 256):
        rows = []
        for shape_id in data.ids()[:shapes]:
            latents = encode_shape(vae, data.surface(shape_id), [n], EncoderInput.of(vae.config))[n]
            pts = torch.from_numpy(data.view(shape_id, 0)["visible_points"][:points])
            picks = token_assignment(vae.geo_decoder, pts[None], vae.decode(latents["mean"][None]))[0]
            dist = torch.cdist(pts, latents["anchors"])  # (P, N)
            rows.append((dist[torch.arange(len(pts)), picks].mean().item(),
                         dist.min(1).values.mean().item(), dist.mean().item(), picks.unique().numel()))
        assigned, nearest, mean, distinct = np.mean(rows, axis=0)
        print(f"N={n}: argmax anchor {assigned:.3f}, nearest anchor {nearest:.3f}, "
              f"average anchor {mean:.3f}, distinct tokens per view {distinct:.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
