"""Validation of a VAE on held-out shapes: occupancy IoU (uniform and near-surface points,
separately), Chamfer distance and F-score of extracted meshes, and a PNG of reconstructions
next to the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vilearn.metrics.geometry import Matching, chamfer_l1, fscore, volume_iou
from vilearn.vae.data import ShapeSampler, load_occupancy, load_surface
from vilearn.vae.extract import latents_to_mesh
from vilearn.vae.fps import fps_indices


@torch.no_grad()
def predict(vae, surface: np.ndarray, points: np.ndarray, num_tokens: int,
            sample_seed: int | None = 0, chunk: int = 16384) -> tuple[np.ndarray, torch.Tensor]:
    """Values at points (Q,) for one shape, and the latent (1, N, C) they were decoded from.

    The latent is a posterior sample drawn with ``sample_seed`` (the distribution the decoder
    is trained on), or the posterior mean when ``sample_seed`` is None. The two can differ a
    lot: tokens whose posterior collapsed to the prior are N(0, 1) noise during training but
    exact zeros at the mean, which the decoder never saw.
    """
    device = next(vae.parameters()).device
    surf = torch.from_numpy(surface)[None].to(device)
    posterior = vae.encode(surf, anchor_index=fps_indices(surf[..., :3], num_tokens)).posterior
    if sample_seed is None:
        latents = posterior.mean
    else:
        latents = posterior.sample(torch.Generator(device).manual_seed(sample_seed))
    tokens = vae.decode(latents)
    pts = torch.from_numpy(points).to(device)
    values = [vae.query(pts[None, i:i + chunk], tokens)[0].float().cpu()
              for i in range(0, len(pts), chunk)]
    return torch.cat(values).numpy(), latents


def validate(vae, sampler: ShapeSampler, num_shapes: int, num_tokens: int, resolution: int,
             fscore_threshold: float, mesh_points: int, png: Path | None = None,
             posterior: str = "sample") -> dict:
    """Mean metrics over the first ``num_shapes`` shapes of the sampler's split.

    ``posterior``: decode a fixed-seed posterior "sample" (seed = shape index) or the "mean".
    """
    import trimesh

    was_training = vae.training
    vae.eval()
    rows, panels = [], []
    for index in range(min(num_shapes, len(sampler))):
        shape_id = sampler.ids[index]
        surface = load_surface(sampler.root, shape_id)
        rng = np.random.default_rng([sampler.seed, index])
        encoder_input = surface[rng.choice(len(surface), min(sampler.num_surface, len(surface)),
                                           replace=False)]
        occ = load_occupancy(sampler.root, shape_id)
        row = {}
        for kind in ("uniform", "near"):
            seed = None if posterior == "mean" else index
            values, latents = predict(vae, encoder_input, occ[f"{kind}_points"], num_tokens, seed)
            row[f"iou_{kind}"] = volume_iou(values > 0, occ[f"{kind}_labels"])
        try:
            mesh, _ = latents_to_mesh(vae, latents, "hierarchical", resolution,
                                      coarse_resolution=max(8, resolution // 4))
            samples = trimesh.Trimesh(mesh.verts, mesh.faces).sample(mesh_points, seed=index)
            matching = Matching.of(np.asarray(samples), surface[:, :3])
            row["chamfer"], row["fscore"] = chamfer_l1(matching), fscore(matching, fscore_threshold)
        except ValueError:  # no surface crosses the level: the worst score, not a crash
            samples = np.zeros((0, 3))
            row["chamfer"], row["fscore"] = float("nan"), 0.0
        rows.append(row)
        panels.append((shape_id, surface[:, :3], np.asarray(samples)))
    vae.train(was_training)
    if png is not None:
        write_comparison_png(png, panels)
    metrics = {k: _mean([r[k] for r in rows]) for k in ("iou_uniform", "iou_near", "chamfer",
                                                          "fscore")}
    metrics["shapes"] = len(rows)
    return metrics


def _mean(values: list[float]) -> float:
    """Mean over the finite values (NaN when there are none)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def write_comparison_png(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One row per shape: ground-truth surface points | points sampled on the reconstruction."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vilearn.io import write_bytes

    fig = plt.figure(figsize=(6, 3 * len(panels)), dpi=80)
    for row, (shape_id, truth, recon) in enumerate(panels):
        for col, (points, title) in enumerate(((truth, "ground truth"), (recon, "reconstruction"))):
            ax = fig.add_subplot(len(panels), 2, 2 * row + col + 1, projection="3d")
            pts = points[:: max(1, len(points) // 4000)]
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], s=0.5, c=pts[:, 1], cmap="viridis")
            ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), title=f"{shape_id}\n{title}")
            ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
