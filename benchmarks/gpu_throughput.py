"""Training throughput of the MM-DiT on one device: steps/s, samples/s, peak memory, MFU.

The trainer's own pieces (``build_model``, ``build_optimizer``, ``EMA``, ``training_step``,
``step_record``, ``Accelerator`` with bf16 on a GPU, ``torch.compile`` as ``train.compile``
does) run on synthetic batches already on the device, so this measures the step, not the
loader (``benchmarks/loader.py`` measures that). Per model and compile setting it prints:

- steps/s and samples/s, the steps queued back to back (logged every ``--log-every`` steps, as
  the trainer reads values back), and steps/s again with a read-back after every step (the old
  loop);
- host ms: the time the host needs to queue one step with the device idle (a step is bound by
  the host when this is close to the step time: the GPU waits for Python);
- device synchronisations inside ``training_step`` (``torch.cuda.set_sync_debug_mode``; a
  blocking host-to-device copy counts too) and aten ops per step (each launches at least one
  kernel; compile off);
- peak memory, and model FLOPs utilisation: 3 x the analytic forward FLOPs of the trained parts
  (``vilearn.dit.flops``, checked here against FlopCounterMode on the device) per second over
  the device's dense bf16 peak (from its name, scaled by its multiprocessors under MIG).

Models: ``bench-gpu`` (the 46M MM-DiT of the GPU convergence benchmark, 256 tokens, batch 64,
a 128 px patch encoder trained jointly) and ``paper-0.39b`` (2048 tokens, batch 64, the last
stage, cached DINOv2-giant tokens: 1370 x 1536 in float16, gradient checkpointing as the config
says). The frozen encoder is a one-layer stand-in of DINOv2-giant's width and token count: with
cached features it never runs, and no weights can be downloaded here. ``--toy`` shrinks both
models to run on a CPU in seconds (it shows the script works, not how fast anything is).

One command on a GPU machine measures everything and writes the table to
``benchmarks/results/gpu-throughput-<device>.md`` (e.g. ``-h100``; ``--out DIR`` writes that
file name into DIR, ``--out FILE`` to FILE), row by row, so a run stopped early keeps its
finished rows; a row that fails (out of memory, a compile error) says so in the table and the
others still run. It needs no install: the repository's ``src`` is put on the path, and the
training path imports none of the mesh-preparation packages (trimesh, libigl, fpsample)::

    python benchmarks/gpu_throughput.py [--models bench-gpu,paper-0.39b] [--compile off,on]
        [--steps 20] [--warmup 5] [--log-every 50] [--toy] [--batch B] [--tokens N]
        [--precision auto|bf16|no] [--peak-tflops T] [--out FILE_OR_DIR]
"""

from __future__ import annotations

import argparse
import gc
import platform
import re
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

try:
    import vilearn  # noqa: F401
except ModuleNotFoundError:  # a bare checkout on a GPU machine: the package's source
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vilearn.config import load_config  # noqa: E402
from vilearn.dit.flops import dit_forward_flops, patch_encoder_flops  # noqa: E402
from vilearn.engine.ema import EMA  # noqa: E402
from vilearn.flow.normalize import LatentStats  # noqa: E402
from vilearn.train.config import TrainConfig  # noqa: E402
from vilearn.train.trainer import (  # noqa: E402
    bare_model,
    build_model,
    build_optimizer,
    step_record,
    training_step,
)

RESULTS = Path(__file__).resolve().parent / "results"
# Dense bf16 tensor-core peak (NVIDIA's data sheets: half the "with sparsity" figure) and the
# whole chip's multiprocessors, by a part of the name torch reports; the first match wins, so
# the longer names come first ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16 = [("GH200", 989.5, 132), ("H200 NVL", 835.5, 132), ("H200", 989.5, 132),
             ("H100 NVL", 835.5, 132), ("H100 PCIe", 756.5, 114), ("H100", 989.5, 132),
             ("A100", 312.0, 108), ("L40S", 362.05, 142)]
BENCH_GPU = ["model={preset: tiny, in_channels: 32, hidden_size: 384, num_heads: 6, depth: 6, "
             "depth_single_blocks: 6}",
             "conditioner={kind: patch, image_size: 128, patch_size: 16, width: 64, depth: 4, "
             "num_heads: 4}", "stages=[{tokens: 256, steps: 100000, batch_size: 64}]"]
TOY_MODEL = ["model.hidden_size=64", "model.num_heads=4", "model.depth=1", "model.depth_single_blocks=1"]


def stand_in_dinov2(folder: Path, width: int, image_size: int) -> Path:
    """A one-layer random DINOv2 of ``width`` at ``image_size`` (patch 14), saved as a model folder
    (once: a folder already there is reused)."""
    import transformers

    if (folder / "config.json").is_file():
        return folder
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
    raise ValueError(f"--models: unknown model {name!r} (bench-gpu, paper-0.39b)")


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
    # SDPBackend is a pybind enum: not iterable. FlopCounterMode counts each fused kernel.
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    backends = [SDPBackend.MATH] if device.type == "cpu" else [*fused, SDPBackend.MATH]
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


def peak_tflops(given: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak in TFLOP/s (None: unknown, no MFU) and where it comes from."""
    if given:
        return given, f"{given:g} TFLOP/s (--peak-tflops)"
    if not torch.cuda.is_available():
        return None, "none (no GPU)"
    name = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    for key, tflops, full in PEAK_BF16:
        if key in name:
            peak = tflops * min(sms, full) / full  # a MIG slice has a part of the multiprocessors
            return peak, f"{peak:.1f} TFLOP/s dense bf16 ({key}'s data sheet, {sms}/{full} multiprocessors)"
    return None, f"unknown for {name!r} (give --peak-tflops for an MFU)"


def device_slug(toy: bool) -> str:
    """``h100``, ``h200``, ``h100-pcie``, ``cpu``, ...: the device part of the result's file name."""
    if not torch.cuda.is_available():
        return "cpu-toy" if toy else "cpu"
    name = torch.cuda.get_device_name()
    key = next((key for key, _, _ in PEAK_BF16 if key in name), name.removeprefix("NVIDIA "))
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")
    return slug + ("-mig" if "MIG" in name else "") + ("-toy" if toy else "")


def output_path(out: Path | None, toy: bool) -> Path | None:
    """--out FILE; --out DIR: DIR/gpu-throughput-<device>.md; none given: that name in
    benchmarks/results on a GPU, nothing on a CPU (the table is printed either way)."""
    name = f"gpu-throughput-{device_slug(toy)}.md"
    if out is None:
        return RESULTS / name if torch.cuda.is_available() else None
    return out / name if out.is_dir() else out


def mixed_precision(choice: str) -> str:
    """--precision for Accelerator: auto is bf16 on a GPU (as ``train.precision: auto``), fp32 on a CPU."""
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return choice


def seconds_per_step(step, steps: int, log_every: int) -> float:
    """Seconds per step over ``steps`` steps queued back to back, read back every ``log_every``."""
    synchronize()
    clock = time.perf_counter()
    for i in range(steps):
        step(log=(i + 1) % log_every == 0)
    synchronize()
    return (time.perf_counter() - clock) / steps


def measure(name: str, compiled: bool, args, work: Path, peak: float | None) -> dict:
    from accelerate import Accelerator

    config = model_config(name, args.toy, work)
    if args.batch or args.tokens:
        stage = config.stages[0]
        stage.batch_size, stage.tokens = args.batch or stage.batch_size, args.tokens or stage.tokens
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mixed_precision(args.precision))
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    ema = EMA(model, config.train.ema_decay, keys=model.trainable_state().keys())
    if compiled:
        torch._dynamo.reset()  # each model compiles afresh, far from dynamo's recompile limit
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    batch = synthetic_batch(config, bare_model(accelerator, model), device)
    stats = LatentStats.identity(config.dit.in_channels)
    counter = iter(range(10**9))

    def step(log: bool = False):
        output = training_step(accelerator, model, optimizer, ema, [batch], stats, config, next(counter))
        return step_record(accelerator, output) if log else output

    try:
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
        seconds = seconds_per_step(step, args.steps, args.log_every)
        every_step = seconds_per_step(step, max(args.steps // 2, 1), 1)  # the old loop
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        syncs = count_syncs(step)
        ops = None if compiled else count_ops(step)
        forward = forward_flops(config, bare_model(accelerator, model))
        with accelerator.autocast():
            counted = counted_flops(bare_model(accelerator, model), batch, device)
        stage = config.stages[0]
        return {
            "model": name, "compile": "on" if compiled else "off",
            "params": sum(p.numel() for p in bare_model(accelerator, model).parameters() if p.requires_grad),
            "tokens": stage.tokens, "batch": stage.batch_size,
            "steps_per_s": 1 / seconds, "samples_per_s": stage.batch_size / seconds,
            "steps_per_s_read_back": 1 / every_step,
            "step_ms": 1000 * seconds, "host_ms": 1000 * sorted(host)[len(host) // 2],
            "syncs": syncs, "ops": ops, "peak_gib": peak_gib,
            "tflop_per_step": 3 * forward / 1e12, "counted_over_analytic": counted / forward,
            "mfu": 3 * forward / seconds / (peak * 1e12) if peak else None,
        }
    finally:
        accelerator.free_memory()


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"


COLUMNS = ["model", "compile", "trained params", "tokens", "batch", "steps/s", "samples/s",
           "steps/s, read back every step", "step ms", "host ms", "syncs / step", "aten ops / step",
           "peak GiB", "TFLOP / step", "counted / analytic", "MFU"]


def table_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['compile']} | failed: {r['error']} |" + " |" * (len(COLUMNS) - 3)

    def show(value, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    return (f"| {r['model']} | {r['compile']} | {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['batch']} | "
            f"{r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | {r['steps_per_s_read_back']:.2f} | "
            f"{r['step_ms']:.1f} | {r['host_ms']:.1f} | {show(r['syncs'], 'd')} | {show(r['ops'], 'd')} | "
            f"{show(r['peak_gib'], '.1f')} | {r['tflop_per_step']:.4g} | {r['counted_over_analytic']:.4f} | "
            f"{show(r['mfu'], '.1%')} |")


def header(args, precision: str, peak_note: str) -> list[str]:
    command = (f"python benchmarks/gpu_throughput.py --models {args.models} --compile {args.compile} "
               f"--steps {args.steps} --warmup {args.warmup} --log-every {args.log_every} "
               f"--precision {args.precision}{' --toy' if args.toy else ''}"
               f"{f' --batch {args.batch}' if args.batch else ''}"
               f"{f' --tokens {args.tokens}' if args.tokens else ''}"
               f"{f' --peak-tflops {args.peak_tflops:g}' if args.peak_tflops else ''}")
    amp = "bf16 autocast" if precision == "bf16" else "fp32"
    return ["# MM-DiT training throughput on one device", "", f"Command: `{command}`", "",
            f"Device: {device_name()}; {amp}, SDPA, synthetic batches on the device; "
            f"peak for MFU: {peak_note}.", "",
            "| " + " | ".join(COLUMNS) + " |", "| --- " * len(COLUMNS) + "|"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bench-gpu,paper-0.39b")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile runs here)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--toy", action="store_true", help="CPU-sized models: checks the script runs")
    parser.add_argument("--batch", type=int, default=None, help="override the models' batch")
    parser.add_argument("--tokens", type=int, default=None, help="override the models' token count")
    parser.add_argument("--precision", choices=["auto", "bf16", "no"], default="auto",
                        help="mixed precision [auto: bf16 on a GPU, fp32 on a CPU]")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak [known GPUs: from their name]")
    parser.add_argument("--out", type=Path, default=None,
                        help="a file, or a folder for gpu-throughput-<device>.md "
                             "[on a GPU: benchmarks/results]")
    args = parser.parse_args(argv)
    for option in ("steps", "warmup", "log_every"):
        if getattr(args, option) < (0 if option == "warmup" else 1):
            parser.error(f"--{option.replace('_', '-')} {getattr(args, option)}: must be >= "
                         f"{0 if option == 'warmup' else 1}")
    models, settings = args.models.split(","), args.compile.split(",")
    for model in models:
        if model not in ("bench-gpu", "paper-0.39b"):
            parser.error(f"--models: unknown model {model!r} (bench-gpu, paper-0.39b)")
    for setting in settings:
        if setting not in ("off", "on"):
            parser.error(f"--compile: {setting!r} is neither off nor on")
    peak, peak_note = peak_tflops(args.peak_tflops)
    out = output_path(args.out, args.toy)
    lines = header(args, mixed_precision(args.precision), peak_note)
    print("\n".join(lines), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in models:
            for setting in settings:
                try:
                    row = measure(name, setting == "on", args, Path(work), peak)
                except Exception as error:  # one row's failure (out of memory, a compile error)
                    traceback.print_exc()  # must not lose the others: said in its row, exit 1
                    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    row = {"model": name, "compile": setting,
                           "error": f"{type(error).__name__}: {message[:200]}".replace("|", "/")}
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                rows.append(row)
                print(table_row(row), flush=True)
                if out is not None:  # after every row: a run stopped early keeps what it measured
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text("\n".join([*lines, *map(table_row, rows)]) + "\n")
    if out is not None:
        print(f"\nwritten: {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
