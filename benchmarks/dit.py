"""MM-DiT speed, side by side in one run: ours vs hy3dgen's Hunyuan3DDiT (same config and
weights), and VAPE none vs va-rope vs va-lpe vs rope (same backbone weights).

Timings interleave the contenders round by round and report medians, so load from other
processes on a shared machine hits all of them alike. Ratios are what to read.

Run: PYTHONPATH=src python benchmarks/dit.py [--out benchmarks/results/dit-cpu.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hy3dgen_ref import load_hy3dgen_module  # noqa: E402
from vilearn.dit import MMDiT, dit_config, fixed_partition  # noqa: E402


def step_fn(model, x, t, cond, visible, backward: bool, reference: bool = False):
    def run():
        if reference:
            out = model(x, t, {"main": cond})
        else:
            out = model(x, t, cond, visible=visible)
        if backward:
            out.square().mean().backward()
            model.zero_grad(set_to_none=True)

    if backward:
        return run
    return lambda: torch.no_grad()(run)()


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--cond-tokens", type=int, default=257)
    parser.add_argument("--context", type=int, default=384)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write a markdown report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    shape = dict(
        in_channels=args.channels,
        context_in_dim=args.context,
        hidden_size=args.hidden,
        num_heads=args.heads,
        depth=args.depth,
        depth_single_blocks=args.single,
    )
    torch.manual_seed(0)
    models = {
        v: MMDiT(dit_config("tiny", **shape, vape=v)).to(device)
        for v in ("none", "va-rope", "va-lpe", "rope")
    }
    for model in models.values():
        model.load_hunyuan3d_state_dict(models["none"].state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.tokens, args.channels, generator=g).to(device)
    t = torch.rand(args.batch, generator=g).to(device)
    cond = torch.randn(args.batch, args.cond_tokens, args.context, generator=g).to(device)
    train_visible = (torch.rand(args.batch, args.tokens, generator=g) < 1 / 3).to(device)
    infer_visible = fixed_partition(args.tokens, batch=args.batch, device=device)

    lines = [
        f"Machine: {platform.machine()} {platform.processor() or ''} "
        f"{'GPU ' + torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
        f"torch {torch.__version__}, {args.threads} thread(s)",
        f"Config: hidden {args.hidden}, heads {args.heads}, {args.depth} double + {args.single} "
        f"single blocks, {args.channels} channels; batch {args.batch}, {args.tokens} shape "
        f"tokens, {args.cond_tokens} image tokens of width {args.context}; "
        f"median of {args.rounds} interleaved rounds",
        "",
    ]

    ref_module = load_hy3dgen_module("shapegen/models/denoisers/hunyuan3ddit.py", "_hy3dgen_dit")
    if ref_module is None:
        lines += ["hy3dgen not installed: reference comparison skipped", ""]
    else:
        ref = ref_module.Hunyuan3DDiT(**shape, axes_dim=[args.hidden // args.heads]).to(device)
        ref.load_state_dict(models["none"].state_dict())
        lines += [
            "| ours vs hy3dgen Hunyuan3DDiT | ours (ms) | hy3dgen (ms) | ours / hy3dgen |",
            "| --- | --- | --- | --- |",
        ]
        for label, backward in (("forward", False), ("forward + backward", True)):
            r = interleaved(
                {
                    "ours": step_fn(models["none"], x, t, cond, None, backward),
                    "ref": step_fn(ref, x, t, cond, None, backward, reference=True),
                },
                args.rounds,
            )
            lines.append(
                f"| {label} | {r['ours'] * 1e3:.1f} | {r['ref'] * 1e3:.1f} | "
                f"{r['ours'] / r['ref']:.3f} |"
            )
        lines.append("")

    lines += [
        "| VAPE | train step fwd+bwd (ms) | / none | inference fwd, fixed partition (ms) "
        "| / none |",
        "| --- | --- | --- | --- | --- |",
    ]
    train = interleaved(
        {v: step_fn(m, x, t, cond, train_visible, True) for v, m in models.items()}, args.rounds
    )
    infer = interleaved(
        {v: step_fn(m, x, t, cond, infer_visible, False) for v, m in models.items()}, args.rounds
    )
    for v in models:
        lines.append(
            f"| {v} | {train[v] * 1e3:.1f} | {train[v] / train['none']:.3f} | "
            f"{infer[v] * 1e3:.1f} | {infer[v] / infer['none']:.3f} |"
        )

    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        command = "PYTHONPATH=src python " + " ".join(["benchmarks/dit.py", *sys.argv[1:]])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# MM-DiT speed\n\nCommand: `{command}`\n\n{report}\n")


if __name__ == "__main__":
    main()
