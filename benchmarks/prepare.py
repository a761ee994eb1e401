"""Time ``vilearn prepare`` on pybullet's random_urdfs at the default settings, all cores.

Prints shapes/s and where the time goes (load + validate + normalise, surface sampling,
winding-number inside test, rendering + writing the views), and writes the result to
benchmarks/results/prepare-cpu.md. Bar (issue 2): the 1000 shapes in under 10 minutes on the
2-core development machine.

    python benchmarks/prepare.py [--limit 1000] [--workers 0] [--out /tmp/vilearn-bench-prepare]
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
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vilearn-bench-prepare"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "prepare-cpu.md")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    shutil.rmtree(args.out, ignore_errors=True)
    config = PrepareConfig()
    start = time.perf_counter()
    summary = prepare_dataset("pybullet:random_urdfs", args.out, config, workers=workers, limit=args.limit)
    wall = time.perf_counter() - start
    busy = sum(summary.timings.values())
    size = folder_size(args.out)
    stages = ", ".join(
        f"{stage} {seconds / busy:.0%}"
        for stage, seconds in sorted(summary.timings.items(), key=lambda item: -item[1])
    )
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        "# `vilearn prepare` throughput",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu or platform.processor()}), no GPU; {workers} workers.",
        f"Command: `python benchmarks/prepare.py --limit {args.limit} --workers {args.workers}`",
        "Settings: the defaults of `PrepareConfig` (50k surface points, 25k uniform + 25k near-surface "
        "occupancy points, 8 views of 384x384 with 20k visible points each).",
        "",
        "| shapes | ok | failed | wall time | shapes/s | projected 1000 shapes | disk per shape |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {summary.total} | {summary.ok} | {summary.failed} | {wall:.1f} s | {summary.total / wall:.2f} | "
        f"{1000 / (summary.total / wall) / 60:.1f} min | {size / max(summary.ok, 1) / 1e6:.2f} MB |",
        "",
        f"Time split (summed over workers, {busy:.1f} s busy): {stages}.",
        "Bar: all 1000 shapes in under 10 minutes on the 2-core machine.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
