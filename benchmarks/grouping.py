"""Visibility Grouping cost: time per view at 2048 and 4096 tokens with 20k visible points,
next to the time to render that view; and the peak memory of 100k points x 4096 tokens.

Two decoders with random weights (timing does not depend on the values): ``tiny`` (our
vae-tiny: width 64, 4 heads) and ``hunyuan3d-vae-v2-0`` (width 1024, 16 heads, 16 layers).
Per shape, the key path (post-KL -> transformer -> keys) runs once; per view, the query path,
the chunked head-averaged softmax and the argmax. The view is rendered at the prepare
default (384 x 384, Embree) from the first random_urdfs shape; its hits, resampled to 20k,
are the visible points.

    PYTHONPATH=src python benchmarks/grouping.py --out benchmarks/results/grouping-cpu.md
    PYTHONPATH=src python benchmarks/grouping.py --device cuda --out benchmarks/results/grouping-gpu.md
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
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def render_view(image_size: int = 384):
    source = next(iter_sources("pybullet:random_urdfs"))
    mesh, _ = normalize(load_mesh(source.path, source.color), margin=0.05)
    caster = Raycaster(mesh.vertices, mesh.faces)
    camera = orbit_camera(30.0, 20.0, 4.0, 40.0, image_size, image_size)
    seconds = best_of(lambda: caster.render(camera), 3)
    return caster.render(camera).points, seconds, len(mesh.faces)


@torch.no_grad()
def time_grouping(vae, points: np.ndarray, num_tokens: int, repeat: int, max_bytes: int):
    device = next(vae.parameters()).device
    latents = torch.randn(1, num_tokens, vae.config.embed_dim, device=device)
    pts = torch.from_numpy(points)[None].to(device)
    keys = None

    def key_path():
        nonlocal keys
        keys = vae.geo_decoder.attention_keys(vae.decode(latents))

    key_path()  # warm-up (CUDA kernels, allocator)
    shape_s = best_of(key_path, 1)
    view_s = best_of(lambda: assign_to_keys(vae.geo_decoder, pts, keys, max_bytes=max_bytes), repeat)
    return shape_s, view_s, chunk_points(1, keys.shape[1], num_tokens, max_bytes)


@torch.no_grad()
def memory_run(config: str, points: int, num_tokens: int, max_mb: int, device: str) -> None:
    """Child process: peak memory growth of one 100k-point assignment (RSS on CPU, the CUDA
    allocator's peak on a GPU)."""
    torch.set_num_threads(1)
    vae = VecSetVAE(replace(preset(config), num_decoder_layers=1, with_encoder=False)).eval().to(device)
    latents = torch.randn(1, num_tokens, vae.config.embed_dim, device=device)
    keys = vae.geo_decoder.attention_keys(vae.decode(latents))
    pts = torch.rand(1, points, 3, device=device) * 2 - 1
    cuda = device.startswith("cuda")

    def peak_bytes() -> int:
        if cuda:
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 2**10

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else peak_bytes()
    start = time.perf_counter()
    assign_to_keys(vae.geo_decoder, pts, keys, max_bytes=max_mb * 2**20)
    synchronize()
    seconds = time.perf_counter() - start
    after = peak_bytes()
    print(f"{(after - before) / 2**20:.0f} {after / 2**20:.0f} {seconds:.2f}")


def machine(device: str) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (VG), {cpu} (rendering)"
    return f"{cpu} (shared), 1 torch thread"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--tokens", default="2048,4096")
    parser.add_argument("--configs", default="tiny,hunyuan3d-vae-v2-0")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-mb", type=int, help="chunk budget (default 16 on CPU, 1024 on CUDA)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-points", type=int, default=100000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        config, points, tokens, max_mb, device = args.memory_child
        memory_run(config, int(points), int(tokens), int(max_mb), device)
        return
    max_mb = args.max_mb or (1024 if args.device.startswith("cuda") else 16)
    hits, render_s, faces = render_view()
    points = hits[np.random.default_rng(0).choice(len(hits), args.points, replace=len(hits) < args.points)]
    lines = [
        f"# Visibility Grouping cost ({args.device})",
        "",
        f"Machine: {machine(args.device)}, torch {torch.__version__}, Python {platform.python_version()}.",
        f"Command: `PYTHONPATH=src python benchmarks/grouping.py {' '.join(sys.argv[1:])}`",
        "",
        f"Rendering the view (384 x 384, Embree on the CPU, {faces} faces, {len(hits)} hits): "
        f"**{render_s * 1000:.1f} ms**. Visible points fed to VG: {args.points}. "
        f"Chunk budget {max_mb} MiB.",
        "",
        "| decoder | tokens | key path per shape (s) | VG per view (s) | points per chunk | VG / render |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.configs.split(","):
        vae = VecSetVAE(replace(preset(name), with_encoder=False)).eval().to(args.device)
        for n in (int(t) for t in args.tokens.split(",")):
            shape_s, view_s, chunk = time_grouping(vae, points, n, args.repeat, max_mb * 2**20)
            lines.append(f"| {name} | {n} | {shape_s:.4f} | {view_s:.4f} | {chunk} "
                         f"| {view_s / render_s:.2f}x |")
            print(lines[-1], flush=True)
    what = "the CUDA allocator's peak" if args.device.startswith("cuda") else "its peak RSS"
    lines += ["", f"Memory, {args.memory_points} points x 4096 tokens (1-layer decoder, same heads), in a "
              f"fresh process: growth of {what} during the assignment, and that peak (MiB; imports "
              "included on CPU):", ""]
    for name in args.configs.split(","):
        out = subprocess.run([sys.executable, __file__, "--memory-child", name, str(args.memory_points),
                              "4096", str(max_mb), args.device], capture_output=True, text=True, check=True)
        grow, peak, seconds = out.stdout.split()
        lines.append(f"- {name}: +{grow} MiB (peak {peak} MiB), {seconds} s")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
