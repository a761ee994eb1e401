"""What the sharp-edge samples cost in ``prepare``: their sampling next to the uniform surface
sampling it already does, on the same meshes, side by side (prepare's defaults: 81920 uniform,
40960 sharp-edge points per shape).

    PYTHONPATH=src python benchmarks/sharp_edges.py --shapes 100 --out benchmarks/results/sharp-edges-cpu.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from vilearn.data.mesh import iter_sources, load_source, normalize
from vilearn.data.sampling import sample_sharp_edges, sample_surface


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def measure(name: str, vertices: np.ndarray, faces: np.ndarray, uniform: int, sharp: int) -> dict:
    rng = np.random.default_rng(0)
    t_uniform, _ = timed(sample_surface, vertices, faces, uniform, rng)
    t_sharp, (points, _) = timed(sample_sharp_edges, vertices, faces, sharp, 20.0, rng)
    return {"name": name, "faces": len(faces), "uniform_s": t_uniform, "sharp_s": t_sharp,
            "has_edges": len(points) > 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=100, help="pybullet:random_urdfs shapes")
    parser.add_argument("--uniform", type=int, default=81920)
    parser.add_argument("--sharp", type=int, default=40960)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for sub in (4, 5, 6, 7):
        sphere = trimesh.creation.icosphere(subdivisions=sub)
        rows.append(measure(f"icosphere {sub}", sphere.vertices, sphere.faces, args.uniform, args.sharp))
    urdf = []
    for source in list(iter_sources("pybullet:random_urdfs"))[: args.shapes]:
        mesh, _ = normalize(load_source(source), 0.05)
        urdf.append(measure(source.id, mesh.vertices, mesh.faces, args.uniform, args.sharp))
    total_u, total_s = sum(r["uniform_s"] for r in urdf), sum(r["sharp_s"] for r in urdf)

    lines = [
        "# Sharp-edge samples in prepare: their cost next to the uniform surface samples (CPU)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, 2-core AMD EPYC CPU (shared), "
        f"torch {torch.__version__} with 1 thread, Python {platform.python_version()}",
        f"- command: `PYTHONPATH=src python benchmarks/sharp_edges.py --shapes {args.shapes}"
        f"{' --out ' + str(args.out) if args.out else ''}`",
        f"- {args.uniform} uniform points (`sample_surface`) and {args.sharp} sharp-edge points "
        "(`sample_sharp_edges`, 20 degrees) per mesh, one after the other on the same mesh",
        "",
        "| mesh | faces | uniform (s) | sharp-edge (s) | sharp / uniform | sharp edges |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['faces']:,} | {r['uniform_s']:.3f} | {r['sharp_s']:.3f} | "
                     f"{r['sharp_s'] / r['uniform_s']:.2f}x | {'yes' if r['has_edges'] else 'none'} |")
    faces = np.median([r["faces"] for r in urdf])
    with_edges = sum(r["has_edges"] for r in urdf)
    lines.append(f"| {len(urdf)} random_urdfs shapes (median {faces:,.0f} faces), total | | "
                 f"{total_u:.2f} | {total_s:.2f} | {total_s / total_u:.2f}x | {with_edges} of {len(urdf)} |")
    emit("\n".join(lines) + "\n", args.out)


def emit(report: str, out: Path | None) -> None:
    """Print the report, and keep it in ``out`` when given."""
    print(report)
    if out is not None:
        out.write_text(report)


if __name__ == "__main__":
    main()
