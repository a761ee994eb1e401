"""Training throughput of the MM-DiT on one device: steps/s, samples/s, peak memory, MFU.

The trainer's own pieces (``build_model``, ``build_optimizer``, ``EMA``, ``training_step``,
``step_record``, ``Accelerator`` with bf16 on a GPU, ``torch.compile`` as ``train.compile``
does) run on synthetic batches already on the device, so this measures the step, not the
loader (``benchmarks/loader.py`` measures that). Per model and compile setting it prints:

- steps/s and samples/s, the steps queued back to back (logged every ``--log-every`` steps, as
  the trainer reads values back; ``--log-every 1`` is the old loop, which read back every step);
- host ms: the time the host needs to queue one step with the device idle (a step is bound by
  the host when this is close to the step time: the GPU waits for Python);
- device synchronisations inside ``training_step`` (``torch.cuda.set_sync_debug_mode``) and
  aten ops per step (each launches at least one kernel; compile off);
- peak memory, and model FLOPs utilisation: 3 x the analytic forward FLOPs of the trained parts
  (``vilearn.dit.flops``, checked here against FlopCounterMode on the device) per second over
  the device's dense bf16 peak.

Models: ``bench-gpu`` (the 46M MM-DiT of the GPU convergence benchmark, 256 tokens, batch 64,
a 128 px patch encoder trained jointly) and ``paper-0.39b`` (2048 tokens, batch 64, the last
stage, cached DINOv2-giant tokens: 1370 x 1536 in float16, gradient checkpointing as the config
says). The frozen encoder is a one-layer stand-in of DINOv2-giant's width and token count: with
cached features it never runs, and no weights can be downloaded here. ``--toy`` shrinks both
models to run on a CPU in seconds (it shows the script works, not how fast anything is).

    python benchmarks/gpu_throughput.py [--models bench-gpu,paper-0.39b] [--compile off,on]
        [--steps 30] [--warmup 10] [--log-every 50] [--toy] [--batch B] [--tokens N]
        [--peak-tflops T] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vilearn.config import load_config
from vilearn.dit.flops import dit_forward_flops, patch_encoder_flops
from vilearn.engine.ema import EMA
from vilearn.flow.normalize import LatentStats
from vilearn.train.config import TrainConfig
from vilearn.train.trainer import bare_model, build_model, build_optimizer, step_record, training_step

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1}
BENCH_GPU = ["model={preset: tiny, in_channels: 32, hidden_size: 384, num_heads: 6, depth: 6, "
             "depth_single_blocks: 6}",
             "conditioner={kind: patch, image_size: 128, patch_size: 16, width: 64, depth: 4, "
             "num_heads: 4}", "stages=[{tokens: 256, steps: 100000, batch_size: 64}]"]
TOY_MODEL = ["model.hidden_size=64", "model.num_heads=4", "model.depth=1", "model.depth_single_blocks=1"]


def stand_in_dinov2(folder: Path, width: int, image_size: int) -> Path:
    """A one-layer random DINOv2 of ``width`` at ``image_size`` (patch 14), saved as a model folder."""
    import transformers

    config = transformers.Dinov2Config(hidden_size=width, num_hidden_layers=1, num_attention_heads=16,
                                       intermediate_size=4 * width, image_size=image_size, patch_size=14)
    transformers.Dinov2Model(config).save_pretrained(folder)
    crop = {"height": image_size, "width": image_size}
    transformers.BitImageProcessor(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(folder)
    return folder


def model_config(name: str, toy: bool, work: Path) -> TrainConfig:
    if name == "bench-gpu":
        overrides = list(BENCH_GPU)
        if toy:
            overrides += [*TOY_MODEL, "conditioner.image_size=32", "conditioner.depth=1",
                          "stages=[{tokens: 32, steps: 100, batch_size: 2}]"]
        return load_config(TrainConfig, "dit-tiny", overrides)
    if name == "paper-0.39b":
        size = 56 if toy else 518
        encoder = stand_in_dinov2(work / f"dinov2-{size}", 1536, size)
        tokens, batch = (32, 2) if toy else (2048, 64)
        overrides = [f"conditioner.model={encoder}", "conditioner.cached=true",
                     f"conditioner.image_size={size}",
                     f"stages=[{{tokens: {tokens}, steps: 100000, batch_size: {batch}}}]"]
        return load_config(TrainConfig, "paper-0.39b", [*overrides, *(TOY_MODEL if toy else [])])
    raise SystemExit(f"--models: unknown model {name!r} (bench-gpu, paper-0.39b)")


def synthetic_batch(config: TrainConfig, model, device) -> dict:
    stage, dit = config.stages[0], config.dit
    b, n, g = stage.batch_size, stage.tokens, torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(b, n, dit.in_channels, generator=g),
             "visible": torch.rand(b, n, generator=g) < 0.3, "t": torch.rand(b, generator=g),
             "noise": torch.randn(b, n, dit.in_channels, generator=g),
             "drop": torch.rand(b, generator=g) < config.conditioner.drop_prob}
    conditioner = model.conditioner
    if config.conditioner.cached:
        batch["features"] = torch.randn(b, conditioner.n_tokens, conditioner.out_dim, generator=g).half()
    else:
        side = conditioner.image_size
        batch["image"] = torch.rand(b, 3, side, side, generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def forward_flops(config: TrainConfig, model) -> int:
    """Analytic forward FLOPs of what the step trains (the DiT, and the patch encoder if it is)."""
    stage, c = config.stages[0], config.conditioner
    flops = dit_forward_flops(config.dit, stage.batch_size, stage.tokens, model.conditioner.n_tokens)
    if c.kind == "patch":
        flops += patch_encoder_flops(c.image_size, c.patch_size, c.width, c.depth, stage.batch_size)
    return flops


def counted_flops(model, batch: dict, device) -> int:
    """FlopCounterMode over one forward of the real model (the math SDPA on a CPU, where the
    counter does not see the fused kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cond = batch.get("features", batch.get("image"))
    t = batch["t"]
    backends = [SDPBackend.MATH] if device.type == "cpu" else list(SDPBackend)[:4]
    with sdpa_kernel(backends), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch["noise"], t, cond, batch["visible"], drop=batch["drop"])
    return counter.get_total_flops()


def count_syncs(fn) -> int | None:
    """Device synchronisations ``fn`` causes (None on a CPU)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def count_ops(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.ops += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.ops


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(name: str, compiled: bool, args, work: Path) -> dict:
    from accelerate import Accelerator

    config = model_config(name, args.toy, work)
    if args.batch or args.tokens:
        stage = config.stages[0]
        stage.batch_size, stage.tokens = args.batch or stage.batch_size, args.tokens or stage.tokens
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no")
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    ema = EMA(model, config.train.ema_decay, keys=model.trainable_state().keys())
    if compiled:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    batch = synthetic_batch(config, bare_model(accelerator, model), device)
    stats = LatentStats.identity(config.dit.in_channels)
    counter = iter(range(10**9))

    def step(log: bool = False):
        output = training_step(accelerator, model, optimizer, ema, [batch], stats, config, next(counter))
        return step_record(accelerator, output) if log else output

    for _ in range(args.warmup):  # compile happens here
        step()
    synchronize()
    host = []
    for _ in range(5):  # the host's time to queue one step, the device idle at its start
        clock = time.perf_counter()
        step()
        host.append(time.perf_counter() - clock)
        synchronize()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter()
    for i in range(args.steps):
        step(log=(i + 1) % args.log_every == 0)
    synchronize()
    seconds = (time.perf_counter() - clock) / args.steps
    forward = forward_flops(config, bare_model(accelerator, model))
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items()
                                     if cuda and k in torch.cuda.get_device_name()), None)
    with accelerator.autocast():
        counted = counted_flops(bare_model(accelerator, model), batch, device)
    return {
        "model": name, "compile": "on" if compiled else "off",
        "params": sum(p.numel() for p in bare_model(accelerator, model).parameters() if p.requires_grad),
        "tokens": config.stages[0].tokens, "batch": config.stages[0].batch_size,
        "steps_per_s": 1 / seconds, "samples_per_s": config.stages[0].batch_size / seconds,
        "step_ms": 1000 * seconds, "host_ms": 1000 * sorted(host)[len(host) // 2],
        "syncs": count_syncs(step), "ops": None if compiled else count_ops(step),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "tflop_per_step": 3 * forward / 1e12, "counted_over_analytic": counted / forward,
        "mfu": 3 * forward / seconds / (peak * 1e12) if peak else None,
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bench-gpu,paper-0.39b")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--toy", action="store_true", help="CPU-sized models: checks the script runs")
    parser.add_argument("--batch", type=int, default=None, help="override the models' batch")
    parser.add_argument("--tokens", type=int, default=None, help="override the models' token count")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak [known GPUs: from their name]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(name, setting == "on", args, Path(work))
                for name in args.models.split(",") for setting in args.compile.split(",")]

    def show(value, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    lines = ["# MM-DiT training throughput on one device", "",
             f"Command: `python benchmarks/gpu_throughput.py --models {args.models} --compile {args.compile} "
             f"--steps {args.steps} --warmup {args.warmup} --log-every {args.log_every}"
             f"{' --toy' if args.toy else ''}{f' --batch {args.batch}' if args.batch else ''}"
             f"{f' --tokens {args.tokens}' if args.tokens else ''}`", "",
             f"Device: {device_name()}; {'bf16 autocast' if torch.cuda.is_available() else 'fp32'}, "
             "SDPA, synthetic batches on the device.", "",
             "| model | compile | trained params | tokens | batch | steps/s | samples/s | step ms "
             "| host ms | "
             "syncs / step | aten ops / step | peak GiB | TFLOP / step | counted / analytic | MFU |",
             "| --- " * 15 + "|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['compile']} | {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['batch']} | "
            f"{r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | {r['step_ms']:.1f} | {r['host_ms']:.1f} | "
            f"{show(r['syncs'], 'd')} | {show(r['ops'], 'd')} | {show(r['peak_gib'], '.1f')} | "
            f"{r['tflop_per_step']:.4g} | {r['counted_over_analytic']:.4f} | {show(r['mfu'], '.1%')} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
