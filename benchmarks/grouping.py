"""Visibility Grouping cost: time per view at 2048 and 4096 tokens with 20k visible points,
next to the time to render that view; and the peak memory of 100k points x 4096 tokens.

Two decoders with random weights (timing does not depend on the values): ``tiny`` (our
vae-tiny: width 64, 4 heads) and ``hunyuan3d-vae-v2-0`` (width 1024, 16 heads, 16 layers).
Per shape, the key path (post-KL -> transformer -> keys) runs once; per view, the query path,
the chunked head-averaged softmax and the argmax. The view is rendered at the prepare
default (384 x 384, Embree) from the first random_urdfs shape; its hits, resampled to 20k,
are the visible points.

    PYTHONPATH=src python benchmarks/grouping.py --out benchmarks/results/grouping-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vilearn.data.camera import orbit_camera
from vilearn.data.mesh import iter_sources, load_mesh, normalize
from vilearn.data.render import Raycaster
from vilearn.grouping.assign import assign_to_keys, chunk_points
from vilearn.vae import VecSetVAE, preset


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def render_view(image_size: int = 384):
    source = next(iter_sources("pybullet:random_urdfs"))
    mesh, _ = normalize(load_mesh(source.path, source.color), margin=0.05)
    caster = Raycaster(mesh.vertices, mesh.faces)
    camera = orbit_camera(30.0, 20.0, 4.0, 40.0, image_size, image_size)
    seconds = best_of(lambda: caster.render(camera), 3)
    return caster.render(camera).points, seconds, len(mesh.faces)


@torch.no_grad()
def time_grouping(vae, points: np.ndarray, num_tokens: int, repeat: int, max_bytes: int):
    latents = torch.randn(1, num_tokens, vae.config.embed_dim)
    pts = torch.from_numpy(points)[None]
    keys = None

    def key_path():
        nonlocal keys
        keys = vae.geo_decoder.attention_keys(vae.decode(latents))

    shape_s = best_of(key_path, 1)
    view_s = best_of(lambda: assign_to_keys(vae.geo_decoder, pts, keys, max_bytes=max_bytes), repeat)
    return shape_s, view_s, chunk_points(1, keys.shape[1], num_tokens, max_bytes)


@torch.no_grad()
def memory_run(config: str, points: int, num_tokens: int, max_mb: int) -> None:
    """Child process: peak RSS growth of one 100k-point assignment."""
    torch.set_num_threads(1)
    vae = VecSetVAE(replace(preset(config), num_decoder_layers=1, with_encoder=False)).eval()
    keys = vae.geo_decoder.attention_keys(vae.decode(torch.randn(1, num_tokens, vae.config.embed_dim)))
    pts = torch.rand(1, points, 3) * 2 - 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assign_to_keys(vae.geo_decoder, pts, keys, max_bytes=max_mb * 2**20)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{(after - before) / 2**10:.0f} {after / 2**10:.0f} {seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--tokens", default="2048,4096")
    parser.add_argument("--configs", default="tiny,hunyuan3d-vae-v2-0")
    parser.add_argument("--max-mb", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-points", type=int, default=100000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        config, points, tokens, max_mb = args.memory_child
        memory_run(config, int(points), int(tokens), int(max_mb))
        return

    hits, render_s, faces = render_view()
    points = hits[np.random.default_rng(0).choice(len(hits), args.points, replace=len(hits) < args.points)]
    lines = [
        "# Visibility Grouping cost (CPU)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
        f"1 torch thread, torch {torch.__version__}, Python {platform.python_version()}.",
        f"Command: `PYTHONPATH=src python benchmarks/grouping.py {' '.join(sys.argv[1:])}`",
        "",
        f"Rendering the view (384 x 384, Embree, {faces} faces, {len(hits)} hits): "
        f"**{render_s * 1000:.0f} ms**. Visible points fed to VG: {args.points}. "
        f"Chunk budget {args.max_mb} MiB.",
        "",
        "| decoder | tokens | key path per shape (s) | VG per view (s) | points per chunk | VG / render |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.configs.split(","):
        vae = VecSetVAE(replace(preset(name), with_encoder=False)).eval()
        for n in (int(t) for t in args.tokens.split(",")):
            shape_s, view_s, chunk = time_grouping(vae, points, n, args.repeat, args.max_mb * 2**20)
            lines.append(f"| {name} | {n} | {shape_s:.2f} | {view_s:.2f} | {chunk} "
                         f"| {view_s / render_s:.1f}x |")
            print(lines[-1], flush=True)
    lines += ["", f"Memory, {args.memory_points} points x 4096 tokens (1-layer decoder, same heads), in a "
              "fresh process: growth of its peak RSS during the assignment, and that peak (imports "
              "included):", ""]
    for name in args.configs.split(","):
        out = subprocess.run([sys.executable, __file__, "--memory-child", name, str(args.memory_points),
                              "4096", str(args.max_mb)], capture_output=True, text=True, check=True)
        grow, peak, seconds = out.stdout.split()
        lines.append(f"- {name}: +{grow} MiB (process peak {peak} MiB), {seconds} s")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
