"""Time ``vilearn prepare`` at the default settings on one or more sources, side by side, all cores.

Prints shapes/s and where the time goes (load + validate + normalise, surface sampling,
winding-number inside test, watertight remeshing, rendering + writing the views) per source and
the time per shape relative to the first source, and writes the result to
benchmarks/results/prepare-cpu.md. Bar (issue 2): 1000 random_urdfs shapes in under 10 minutes on
the 2-core development machine.

    python benchmarks/prepare.py [--sources pybullet:random_urdfs,sweethome3d:furniture]
        [--limit 1000] [--workers 0] [--out /tmp/vilearn-bench-prepare]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from vilearn.data.prepare import PrepareConfig, prepare_dataset


def folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="pybullet:random_urdfs,sweethome3d:furniture")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many shapes per source")
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vilearn-bench-prepare"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "prepare-cpu.md")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    config = PrepareConfig()
    rows, splits, per_shape = [], [], []
    for index, source in enumerate(args.sources.split(",")):
        out = args.out / f"source-{index}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        summary = prepare_dataset(source, out, config, workers=workers, limit=args.limit)
        wall = time.perf_counter() - start
        busy = sum(summary.timings.values())
        size = folder_size(out)
        per_shape.append(wall / summary.total)
        stages = ", ".join(
            f"{stage} {seconds / busy:.0%}"
            for stage, seconds in sorted(summary.timings.items(), key=lambda item: -item[1])
        )
        reasons = ", ".join(f"{n} x {r}" for r, n in sorted(summary.reasons.items())) or "none"
        rows.append(f"| {source} | {summary.total} | {summary.ok} ({summary.ok / summary.total:.1%}) | "
                    f"{summary.failed} | {wall:.1f} s | {summary.total / wall:.2f} | "
                    f"{per_shape[-1] / per_shape[0]:.2f} | {size / max(summary.ok, 1) / 1e6:.2f} MB |")
        splits.append(f"- {source}: {busy:.1f} s busy, summed over workers: {stages}. Failures: {reasons}.")
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        "# `vilearn prepare` throughput",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu or platform.processor()}), no GPU; {workers} workers.",
        f"Command: `python benchmarks/prepare.py --sources {args.sources} --limit {args.limit} "
        f"--workers {args.workers}`",
        "Settings: the defaults of `PrepareConfig` (81920 surface points and 40960 on sharp edges, "
        "25k uniform + 25k near-surface occupancy points, 8 views of 384x384 with 20k visible points "
        "each, watertight remeshing where the inside test is unreliable).",
        "",
        "| source | shapes | ok | failed | wall time | shapes/s | time per shape / first source | "
        "disk per shape |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Time split:",
        *splits,
        "",
        "Bar: 1000 random_urdfs shapes in under 10 minutes on the 2-core machine.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
