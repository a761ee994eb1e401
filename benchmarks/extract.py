"""Dense vs hierarchical volume decoding, side by side on the same latents and weights.

Also runs hy3dgen 2.0.2's VanillaVolumeDecoder and HierarchicalVolumeDecoding (when hy3dgen
is installed) on the very same decoder module: our ``CrossAttentionDecoder`` keeps hy3dgen's
``geo_decoder(queries=, latents=)`` interface.

    PYTHONPATH=src python benchmarks/extract.py --vae RUN_OR_VAE --dataset DATASET \
        --resolution 256 --out benchmarks/results/extract-cpu.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vilearn.vae.data import read_manifest
from vilearn.vae.resolve import resolve_vae
from vilearn.vae.surface import marching_cubes
from vilearn.vae.validate import predict
from vilearn.vae.volume import (
    CountingField,
    VolumeGrid,
    dense_grid,
    field_from_decoder,
    grid_iou,
    hierarchical_grid,
)


class CountingDecoder:
    """hy3dgen-interface wrapper that counts query points."""

    def __init__(self, geo_decoder):
        self.geo_decoder, self.queries = geo_decoder, 0

    def __call__(self, queries=None, latents=None, **kwargs):
        self.queries += queries.shape[0] * queries.shape[1]
        return self.geo_decoder(queries=queries, latents=latents, **kwargs)


def load_hy3dgen_volume_decoders():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vae"))
    if importlib.util.find_spec("hy3dgen") is None:
        return None
    from conftest import _load_hy3dgen_autoencoders

    return _load_hy3dgen_autoencoders()


def timed(fn):
    tic = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - tic


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"with {torch.get_num_threads()} thread(s), Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", required=True, help="training run, checkpoint or VAE folder")
    parser.add_argument("--dataset", required=True, help="prepared dataset to take a shape from")
    parser.add_argument("--shape", default=None, help="shape id (default: first val shape)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--coarse", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-hy3dgen", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="markdown report to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae = resolve_vae(args.vae)
    rows = read_manifest(args.dataset, "val") or read_manifest(args.dataset)
    shape_id = args.shape or rows[0]["id"]
    with np.load(Path(args.dataset) / "shapes" / shape_id / "surface.npz") as f:
        surface = np.concatenate([f["points"], f["normals"]], 1).astype(np.float32)
    _, latents = predict(vae, surface[:4096], np.zeros((1, 3), np.float32), args.tokens)
    with torch.no_grad():
        tokens = vae.decode(latents)
    field = field_from_decoder(vae.geo_decoder, tokens)
    r = args.resolution
    results: list[tuple[str, VolumeGrid, float]] = []
    failures: list[str] = []

    with torch.no_grad():
        dense, t_dense = timed(lambda: dense_grid(field, r, chunk=args.chunk))
        results.append(("vilearn dense", dense, t_dense))
        counter = CountingField(field)
        hier, t_hier = timed(lambda: hierarchical_grid(counter, r, coarse_resolution=args.coarse,
                                                       chunk=args.chunk))
        results.append((f"vilearn hierarchical ({args.coarse}->{r})", hier, t_hier))
        ae = None if args.skip_hy3dgen else load_hy3dgen_volume_decoders()
        if ae is not None:
            for name, decoder in (("hy3dgen VanillaVolumeDecoder", ae.VanillaVolumeDecoder()),
                                  ("hy3dgen HierarchicalVolumeDecoding",
                                   ae.HierarchicalVolumeDecoding())):
                counting = CountingDecoder(vae.geo_decoder)
                try:
                    grid, seconds = timed(lambda d=decoder, c=counting: d(
                        tokens, c, bounds=1.01, num_chunks=args.chunk, octree_resolution=r,
                        enable_pbar=False))
                except (ValueError, RuntimeError) as error:
                    failures.append(f"{name} failed after {counting.queries:,} queries: "
                                    f"{type(error).__name__}: {error}")
                    continue
                results.append((name, VolumeGrid(grid[0].float(), 1.01, counting.queries),
                                seconds))

    mesh, t_mc = timed(lambda: marching_cubes(hier))
    lines = [
        f"# Volume decoding at {r}^3: dense vs hierarchical (CPU)",
        "",
        f"- machine: {machine()} (2-core shared CPU box of the ViLearn dev setup)",
        f"- command: `PYTHONPATH=src python {' '.join(sys.argv)}`",
        f"- weights: `{args.vae}` ({sum(p.numel() for p in vae.parameters())} parameters, "
        f"width {vae.config.width}, {vae.config.num_decoder_layers} decoder layers)",
        f"- latents: shape `{shape_id}` of `{args.dataset}`, {args.tokens} tokens (posterior sample, "
        "seed 0)",
        f"- chunk: {args.chunk} points per decoder call; bounds [-1.01, 1.01]^3",
        "",
        "| method | decoder queries | seconds | speed-up vs dense | IoU vs vilearn dense "
        "| unevaluated (NaN) points |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, grid, seconds in results:
        nan = int(torch.isnan(grid.values).sum())
        lines.append(f"| {name} | {grid.queries:,} | {seconds:.1f} | {t_dense / seconds:.1f}x "
                     f"| {grid_iou(dense, grid):.4f} | {nan:,} |")
    lines += [f"\n{failure}" for failure in failures]
    lines += [
        "",
        f"Marching cubes on the hierarchical grid: {t_mc:.1f} s, {len(mesh.verts):,} vertices, "
        f"{len(mesh.faces):,} faces.",
        "",
        "IoU is over the inside sets (value > 0) of the full (R+1)^3 grids. hy3dgen's "
        "hierarchical decoder leaves the points it skips as NaN (counted as outside here), "
        "ours fills them by trilinear interpolation of the coarser level.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        from vilearn.io import write_text

        write_text(args.out, report)


if __name__ == "__main__":
    main()
