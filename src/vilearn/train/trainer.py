"""``vilearn train``: the diffusion model's training loop on Accelerate.

Cut into named pieces: ``build_model``, ``build_optimizer``, ``check_inputs``,
``training_step``, ``save_state`` / ``load_state``, ``train``. A run folder holds::

    RUN/config.yaml            the resolved config (dataset and vae as absolute paths)
    RUN/vae.json               the VAE's identity (name, hash, path): its latents, and the only
                               VAE that may decode the run's samples (``vilearn.vae.identity``)
    RUN/git.txt                the git revision the run started from, when known
    RUN/latent_stats/<N>.json  the latent statistics the model was trained with
    RUN/log.jsonl              one JSON row per logged step and per validation
    RUN/tb/                    TensorBoard events
    RUN/checkpoints/           step-XXXXXXX/{model,ema,optimizer,rng}.safetensors + meta.json, latest
    RUN/val/step-XXXXXXX.png   generated meshes next to the condition images
    RUN/init.json              where the weights came from (``init.dit``), when fine-tuning
    RUN/adapter/               a LoRA run's EMA adapters in peft's layout (``vilearn.train.lora``)

Exactness: the data order and every random choice of a sample (its view, posterior noise,
timestep, flow noise and condition dropout) are pure functions of (seed, stage, its position in
the data stream) (``vilearn.train.data``); the LR is a function of s; model, EMA, optimizer and
RNG states are saved. A run stopped at step s and resumed therefore reproduces the
uninterrupted loss curve exactly on CPU, and since stage batch sizes are global, the same run on
R processes (DDP, ``accelerate launch``) sees the same samples with the same draws at every
step: its loss curve is that of one process within float rounding, and it may resume on another
process count. Stages of the progressive token schedule share the optimizer and EMA (the
denoiser's weights do not depend on N). Fine-tuning starts from released weights (``init.dit``,
``vilearn.train.pretrained``), in full or with LoRA (``train.lora``): the optimizer and the EMA
then hold the adapters and the few tensors trained with them, and the frozen base is read from
``init.dit`` again on resume.

Between logged steps nothing is read back from the device (``training_step`` leaves its
outputs there; ``step_record`` reads them on the logged steps), so on a GPU the host queues
the next step while the device runs this one.

Faults: an unreadable training item is replaced by the next readable one (deterministically) and
counted in the log; an unexpected exception saves the state after the last completed step
before it propagates (``TrainingFailed``), as SIGTERM does, so no finished step is lost.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from torch import Tensor

from vilearn.config import ConfigError, from_dict, to_dict
from vilearn.dit.build import build_denoiser
from vilearn.dit.conditioner import build_conditioner
from vilearn.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from vilearn.engine.ema import EMA
from vilearn.engine.logging import JSONLLogger
from vilearn.engine.rng import capture_rng_state, restore_rng_state
from vilearn.engine.runtime import git_commit, resolve_precision
from vilearn.engine.schedule import lr_factor
from vilearn.engine.stop import TrainingGuard
from vilearn.flow.normalize import LatentStats
from vilearn.flow.objective import flow_matching_loss
from vilearn.io import clean_stale_tmp, read_json, write_json, write_text
from vilearn.train.config import TrainConfig
from vilearn.train.data import LatentViewDataset, StepBatches, batch_condition
from vilearn.train.denoiser import Denoiser
from vilearn.vae.encode import latents_dir
from vilearn.vae.identity import LatentsError, VAEIdentity, find_latents, load_identified

BUCKETS = (0.25, 0.5, 0.75)  # loss is also logged by t in [0, .25), [.25, .5), ...
STATE = ("model", "ema", "optimizer", "rng")  # what a checkpoint must hold to resume


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``dataset``, ``vae``, ``init.dit`` and a local ``conditioner.model`` folder as absolute
    paths, so the run works from any folder (a hub id such as ``facebook/dinov2-giant`` is kept)."""
    from vilearn.train.features import model_identity

    def absolute(text: str) -> str:
        return str(Path(text).resolve()) if text else text

    conditioner = dataclasses.replace(config.conditioner, model=model_identity(config.conditioner.model))
    return dataclasses.replace(config, dataset=absolute(config.dataset), vae=absolute(config.vae),
                               init=dataclasses.replace(config.init, dit=absolute(config.init.dit)),
                               conditioner=conditioner)


def vae_identity(config: TrainConfig) -> VAEIdentity:
    """The identity of the run's VAE (which names its latents folder), checked to have latents
    in the dataset."""
    if not config.vae:
        raise ConfigError("vae: the VAE that made the latents is required (vae=PATH)")
    try:
        vae, identity = load_identified(config.vae, config.vae_name)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"vae: {error}") from error
    if config.init.dit:
        check_release_vae(config, vae)
    try:
        find_latents(config.dataset, identity)
    except (FileNotFoundError, LatentsError) as error:
        raise ConfigError(f"dataset: {error}") from error
    return identity


def check_release_vae(config: TrainConfig, vae) -> None:
    """``init.dit``'s denoiser was trained on latents of one VAE, which the release names (its
    checkpoint's VAE part, config.yaml's scale_factor): ``vae`` (``config.vae``'s) must be that
    one. A difference is refused, naming both, or with ``init.check_vae: false`` a warning."""
    from vilearn.train.pretrained import Released, vae_differences

    try:
        problems = vae_differences(Released.read(config.init.dit), vae, config.vae, config.latent_norm)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"init.dit: {error}") from error
    if not problems:
        return
    message = (f"vae: {config.vae} is not the VAE the denoiser of init.dit {config.init.dit} was "
               f"trained with: " + "; ".join(problems))
    if config.init.check_vae:
        raise ConfigError(f"{message} (encode with the release's VAE, or set init.check_vae: false "
                          "to fine-tune on these latents anyway)")
    warnings.warn(message, stacklevel=3)


def check_inputs(config: TrainConfig) -> tuple[dict[int, LatentStats], VAEIdentity]:
    """Fail at start, naming the problem: dataset, VAE, latents, stats, channel counts, widths.
    Returns the latent statistics per stage's token count and the VAE's identity."""
    from vilearn.data.dataset import PreparedDataset

    if not config.dataset:
        raise ConfigError("dataset: a prepared dataset folder is required")
    try:
        PreparedDataset(config.dataset)
    except FileNotFoundError as error:
        raise ConfigError(f"dataset: {error}") from error
    identity, dit = vae_identity(config), config.dit
    name = identity.key
    stats = {}
    for stage in config.stages:
        path = latents_dir(config.dataset, name, stage.tokens) / "stats.json"
        if not path.is_file():
            raise ConfigError(
                f"dataset {config.dataset}: no latents for VAE {name!r} at {stage.tokens} tokens "
                f"({path} is missing; run 'vilearn encode' and 'vilearn group' first)")
        stats[stage.tokens] = LatentStats.load(path)
        if config.latent_norm == "vae":
            stats[stage.tokens] = vae_scale_stats(path.parent.parent / "vae.json", stats[stage.tokens])
        if stats[stage.tokens].channels != dit.in_channels:
            raise ConfigError(
                f"VAE/DiT channel mismatch: the latents of {name!r} have "
                f"{stats[stage.tokens].channels} channels but model.in_channels is {dit.in_channels}")
    return stats, identity


def vae_scale_stats(meta: Path, dataset_stats: LatentStats) -> LatentStats:
    """``latent_norm: vae``: latents times the VAE's scale_factor (mean 0, std 1 / scale), as
    Hunyuan3D's denoisers were trained; ``meta`` is the latents' vae.json (from encode)."""
    from vilearn.io import read_json

    scale = read_json(meta)["vae_config"].get("scale_factor", 1.0)
    return LatentStats.identity(dataset_stats.channels, scale)


def cached_features(config: TrainConfig, model: Denoiser) -> str | None:
    """The features folder the run reads (``conditioner.cached``), checked at start; else None."""
    if not config.conditioner.cached:
        return None
    if model.init_report is not None and model.init_report["conditioner_differs"]:
        raise ConfigError("conditioner.cached: the features come from conditioner.model's DINOv2, "
                          f"but {config.init.dit} carries other DINOv2 weights, which training "
                          "would use at inference; set init.conditioner: false, or train uncached")
    from vilearn.train.features import check_features

    try:
        return check_features(config.dataset, model.conditioner)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"conditioner.cached: {error}") from error


def build_model(config: TrainConfig) -> Denoiser:
    """The denoiser of ``config``: random, or the released ``init.dit`` (then, with
    ``train.lora``, adapters on it); ``model.init_report`` says what was loaded."""
    conditioner = build_conditioner(config.conditioner, context_in_dim=config.dit.context_in_dim)
    dit = build_denoiser(config.dit)
    dit.gradient_checkpointing = config.train.gradient_checkpointing
    model = Denoiser(dit, conditioner)
    model.init_report = None
    if config.init.dit:
        from vilearn.train.pretrained import init_from_released

        model.init_report = init_from_released(model, config.init.dit, config.init.conditioner)
        if config.train.lora is not None:
            from vilearn.train.lora import apply_lora

            apply_lora(model, config.train.lora, keep_trainable=model.init_report["new"])
    return model


def build_optimizer(model: Denoiser, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, biases and norm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optim
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas))


# What ``accelerate launch --use_fsdp`` / ``--use_deepspeed`` (or its config file) set
SHARDED_LAUNCH = {"ACCELERATE_USE_FSDP": "--use_fsdp", "ACCELERATE_USE_DEEPSPEED": "--use_deepspeed"}


def check_parallelism(distributed_type=None) -> None:
    """Refuse the sharded strategies this trainer does not handle yet, before any step: asked
    for by the launcher (its environment variables, read before the Accelerator is made: on a
    CPU accelerate quietly runs an FSDP launch as DDP) or chosen by the Accelerator
    (``distributed_type``, when given).

    FSDP and DeepSpeed shard the parameters: the EMA (whole tensors, updated from the local
    module's state dict), checkpoints (written from rank 0's state dict alone) and validation
    (rank 0 alone runs the model) all assume every process holds the whole model, as DDP does.
    """
    asked = [f"{name}={os.environ[name]} (accelerate launch {flag})"
             for name, flag in SHARDED_LAUNCH.items()
             if os.environ.get(name, "").strip().lower() in ("1", "true", "t", "yes", "y", "on")]
    if str(distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED"):
        asked.insert(0, str(distributed_type))
    if asked:
        raise ConfigError(f"{', '.join(asked)}: sharded training is not supported yet (EMA, "
                          "checkpoints and validation need whole parameters on rank 0); launch DDP "
                          "instead: accelerate launch --multi_gpu -m vilearn train ...")


def stop_requested(accelerator, stop_signal, every: int, step: int) -> int | None:
    """The signal that asks every process to save and stop, or None (``stop_signal``: a
    ``vilearn.engine.stop.StopSignal``).

    One process: its own flag, every step. Several: any process's flag, agreed on by all (so
    they save and stop at the same step) every ``every`` steps; a collective read-back, hence
    not every step.
    """
    if accelerator.num_processes == 1:
        return stop_signal.received
    if step % every:
        return None
    flag = torch.tensor([stop_signal.received or 0], device=accelerator.device)
    return int(accelerator.reduce(flag, reduction="max")) or None


class StepOutput(NamedTuple):
    """What one optimizer step leaves on the device for logging (nothing is read back)."""

    per_sample: Tensor  # (B_local * A,) flow loss per sample, detached
    t: Tensor  # (B_local * A,) their timesteps
    grad_norm: Tensor  # () before clipping (0 when clipping is off)
    lr: float
    aux: Tensor | None = None  # () the denoiser's auxiliary loss (e.g. MoE balancing), if any


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on ``device``; copies from pinned memory overlap with compute."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def training_step(accelerator, model, optimizer, ema: EMA, batches: list[dict], stats: LatentStats,
                  config: TrainConfig, step: int) -> StepOutput:
    """One optimizer step over ``grad_accum`` micro-batches (each a ``LatentViewDataset`` batch
    with its per-sample draws ``t``, ``noise``, ``drop``).

    Nothing here waits for the device: no value is read back to the host (``step_record`` does
    that, on the steps that are logged), so the host queues the next step while this one runs.
    """
    o = config.optim
    lr = o.lr * lr_factor(step, o.warmup_steps, config.total_steps, o.decay, o.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr
    per_sample, times, aux_losses = [], [], []
    grad_norm = torch.zeros((), device=accelerator.device)
    for batch in batches:
        batch = to_device(batch, accelerator.device)
        x, drop = stats.normalize(batch["latents"]), batch["drop"]
        with accelerator.accumulate(model):
            with accelerator.autocast():
                result = flow_matching_loss(
                    lambda x_t, t, cond, visible, drop=drop: model(x_t, t, cond, visible, drop=drop),
                    x, batch_condition(batch), batch["visible"], t=batch["t"], noise=batch["noise"])
                loss = result.loss
                aux = bare_model(accelerator, model).auxiliary_loss()  # e.g. MoE load balancing
                if aux is not None:
                    loss = loss + aux
                    aux_losses.append(aux.detach().float())
            accelerator.backward(loss)
            if accelerator.sync_gradients and o.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        per_sample.append(result.per_sample)
        times.append(result.t)
    ema.update(bare_model(accelerator, model), step)
    aux = torch.stack(aux_losses).mean() if aux_losses else None
    return StepOutput(torch.cat(per_sample), torch.cat(times), grad_norm, lr, aux)


def step_record(accelerator, output: StepOutput) -> dict[str, float]:
    """The logged values of a step, over all processes: loss, loss by timestep bucket, grad norm,
    lr, the denoiser's auxiliary loss. A collective: every process calls it on the same steps."""
    per_sample = accelerator.gather(output.per_sample).float().cpu()
    times = accelerator.gather(output.t.to(output.per_sample.device)).float().cpu()
    record = {"loss": float(per_sample.mean()), "lr": output.lr, "grad_norm": float(output.grad_norm)}
    if output.aux is not None:  # the denoiser's auxiliary loss, added to the flow loss in backward
        record["aux_loss"] = float(accelerator.gather(output.aux[None]).mean())
    edges = (0.0, *BUCKETS, 1.0)
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (times >= low) & (times < high)
        if inside.any():
            record[f"loss_t{low:.2f}-{high:.2f}"] = float(per_sample[inside].mean())
    return record


def bare_model(accelerator, model) -> Denoiser:
    """The Denoiser behind DDP and torch.compile wrappers (compile's prefixes every state key)."""
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)


def save_state(out: Path, step: int, model: Denoiser, optimizer, ema: EMA, config: TrainConfig) -> Path:
    meta = {"config": to_dict(config), "dit_config": to_dict(config.dit), "git": git_commit(),
            "stage": config.stage_at(step)[0] if step < config.total_steps else len(config.stages) - 1}
    path = save_checkpoint(out / "checkpoints", step, {
        "model": model.trainable_state(),
        "ema": ema.state_dict(),
        "optimizer": optimizer_to_tensors(optimizer.state_dict()),
        "rng": capture_rng_state(),
    }, meta=meta, keep=config.train.keep_checkpoints)
    if model.lora_config is not None:
        from vilearn.train.lora import save_adapter

        save_adapter(out / "adapter", model, ema.averaged(model))
    return path


def load_state(groups: dict, meta: dict, model: Denoiser, optimizer, ema: EMA) -> int:
    """Put a verified checkpoint's state (``load_checkpoint``'s output) into the run."""
    model.load_trainable_state(groups["model"])
    optimizer.load_state_dict(optimizer_from_tensors(groups["optimizer"]))
    ema.load_state_dict(groups["ema"])
    restore_rng_state(groups["rng"])
    return int(meta["step"])


def find_resume(out: Path, resume: str | None) -> tuple[Path, dict, dict] | None:
    """The checkpoint to resume from, loaded and verified: (path, groups, meta), or None.

    ``None``: a fresh run (refuses a folder that holds one); ``latest``: the run's newest intact
    checkpoint, if any (a damaged newer one is skipped with a warning); a path: that checkpoint
    (a damaged one is an error naming the file).
    """
    folder = out / "checkpoints"
    if resume is None:
        if latest_checkpoint(folder) is not None:
            raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or another --out")
        return None
    if resume == "latest":
        return load_latest(folder, STATE)
    path = Path(resume)
    return (path, *load_checkpoint(path, STATE))


def check_resume_config(out: Path, config: TrainConfig, identity: VAEIdentity) -> None:
    """A resumed run must keep its config and its VAE; only the stages' step counts may change."""
    stored = yaml.safe_load((out / "config.yaml").read_text())
    try:  # runs made before paths were stored absolute: theirs, resolved here
        stored = to_dict(absolute_paths(from_dict(TrainConfig, stored, "config.yaml")))
    except ConfigError:
        pass  # compared as stored: the difference is reported below
    current = to_dict(config)
    for key in current:
        a, b = stored.get(key), current[key]
        if key == "stages":
            a = [{k: v for k, v in s.items() if k != "steps"} for s in a]
            b = [{k: v for k, v in s.items() if k != "steps"} for s in b]
        if key in ("val",):
            continue
        if a != b:
            raise ConfigError(f"{key}: differs from {out / 'config.yaml'}; resume with the run's own "
                              "config (only stage step counts and val may change) or choose a new --out")
    record = out / "vae.json"
    if record.is_file() and read_json(record).get("hash") != identity.digest:
        raise ConfigError(f"vae: {config.vae} is not the VAE this run was trained with ({record}: "
                          f"hash {read_json(record).get('hash', '')[:12]}, now {identity.digest[:12]}); "
                          "its latents would not match the model's")


def _loader(dataset: LatentViewDataset, sampler: StepBatches, workers: int, seed: int,
            prefetch: int = 2, device: torch.device | str = "cpu"):
    """Batches from ``workers`` processes (in this one when 0), each keeping ``prefetch``
    batches ready, into pinned memory when ``device`` is a GPU (``to_device`` then copies
    without blocking). The workers are persistent: a loader iterated again (this loop makes one
    iterator per stage) keeps them instead of starting new ones.

    The loader draws its workers' base seed from a generator of its own: from the global RNG,
    that draw would happen at the step a resumed run makes its loader, and every later global
    draw (LoRA's dropout masks) would differ from the uninterrupted run's."""
    from torch.utils.data import DataLoader

    parallel = {"persistent_workers": True, "prefetch_factor": prefetch} if workers else {}
    return iter(DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                           pin_memory=torch.device(device).type == "cuda",
                           generator=torch.Generator().manual_seed(seed), **parallel))


def train(config: TrainConfig, out: str | Path, resume: str | None = None,
          max_steps: int | None = None, on_log: Callable[[dict], None] | None = None,
          on_stage: Callable[[int, LatentViewDataset], None] | None = None) -> dict:
    """Train (or resume) the diffusion model in ``out``; returns the last train/val records.

    ``max_steps``: stop after this global step in this call (the schedule still spans all stages).
    SIGTERM or Ctrl-C saves a checkpoint at the end of the current step, then returns with
    ``record["interrupted"] = signal number``. Any other exception saves the state of the last
    completed step, writes ``RUN/error.txt`` (the traceback) and raises ``TrainingFailed``.
    """
    from accelerate import Accelerator

    from vilearn.train.validation import Validator

    check_parallelism()  # what the launcher asked for, before anything is read or made
    out = Path(out)
    config = absolute_paths(config)
    stats, identity = check_inputs(config)
    resumed = find_resume(out, resume)
    t = config.train
    accelerator = Accelerator(mixed_precision=resolve_precision(t.precision),
                              gradient_accumulation_steps=t.grad_accum)
    check_parallelism(accelerator.distributed_type)
    main = accelerator.is_main_process
    torch.manual_seed(t.seed)
    model = build_model(config)
    features = cached_features(config, model)  # before the run folder is made
    optimizer = build_optimizer(model, config)
    ema = EMA(model, t.ema_decay, keys=model.trainable_state().keys())
    start = 0
    if resumed is not None:
        check_resume_config(out, config, identity)
        start = load_state(*resumed[1:], model, optimizer, ema)
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        write_text(out / "git.txt", (git_commit() or "unknown") + "\n")
        for tokens, stat in stats.items():
            write_json(out / "latent_stats" / f"{tokens}.json", stat.to_dict())
        if model.init_report is not None:
            write_json(out / "init.json", model.init_report)
    if main:
        write_json(out / "vae.json", {**identity.to_dict(), "key": identity.key})
        clean_stale_tmp(out, out / "latent_stats", out / "val")
    image_size, crop = model.conditioner.image_size, model.conditioner.crop
    if t.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    logger, writer = JSONLLogger(out / "log.jsonl"), None
    if main:
        logger.truncate_after(start)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start)
    validator = Validator(config, identity.key, stats, out, features) if main else None
    device_stats = {tokens: stat.to(accelerator.device) for tokens, stat in stats.items()}
    world = accelerator.num_processes
    stop = min(config.total_steps, max_steps if max_steps is not None else config.total_steps)
    last: dict = {}
    step, stage_index, batches = start, None, None
    model.train()
    tic, tic_step = time.perf_counter(), start
    guard = TrainingGuard(out, logger, main=main, keep=(ConfigError,), start=start, writer=writer,
                          save=lambda done: save_state(out, done, bare_model(accelerator, model),
                                                       optimizer, ema, config))
    with guard:
        while step < stop:
            index, stage, stage_start = config.stage_at(step)
            if index != stage_index:
                stage_index = index
                dataset = LatentViewDataset(config.dataset, identity.key, stage.tokens, "train",
                                            image_size, t.posterior, features=features,
                                            visibility=t.visibility, crop=crop,
                                            timesteps=config.timesteps,
                                            drop_prob=config.conditioner.drop_prob)
                for problem in dataset.problems:
                    warnings.warn(f"training data: {problem}", stacklevel=2)
                if len(dataset) == 0:
                    raise ConfigError(no_items_message(config, stage.tokens, dataset))
                if on_stage:
                    on_stage(index, dataset)
                if main:
                    logger.log({"step": step, "stage": index, "tokens": stage.tokens,
                                "batch_size": stage.batch_size, "items": len(dataset),
                                "skipped": dict(dataset.skipped),
                                "cached_images": len(dataset.ready)})
                if stage.batch_size % world:
                    raise ConfigError(f"stages[{index}].batch_size {stage.batch_size} is not "
                                      f"divisible by the {world} processes")
                sampler = StepBatches(len(dataset), stage.batch_size // world, t.grad_accum, t.seed,
                                      index, step - stage_start, stage.steps,
                                      accelerator.process_index, world)
                batches = _loader(dataset, sampler, t.workers, t.seed, t.prefetch_factor,
                                  accelerator.device)
            micro = [next(batches) for _ in range(t.grad_accum)]
            guard.note_replaced(p for batch in micro for text in batch["unreadable"]
                                for p in text.split("\n") if p)
            output = training_step(accelerator, model, optimizer, ema, micro, device_stats[stage.tokens],
                                   config, step)
            step += 1
            guard.step = step  # the state is now that of ``step`` completed steps
            logging = step % t.log_every == 0 or step == stop or step == start + 1
            if logging:
                record = step_record(accelerator, output)  # the only read-back of a step
            if logging and main:
                rate = (step - tic_step) / max(time.perf_counter() - tic, 1e-9)
                record.update(step=step, stage=index, tokens=stage.tokens, steps_per_s=rate,
                              samples_per_s=rate * stage.batch_size * t.grad_accum)
                if guard.replaced:
                    record["unreadable_items"] = sum(guard.replaced.values())
                logger.log(record)
                for key, value in record.items():
                    if key not in ("step", "stage"):
                        writer.add_scalar(f"train/{key}", value, step)
                last["train"] = record
                if on_log:
                    on_log(record)
            if logging:
                tic, tic_step = time.perf_counter(), step
            interrupted = stop_requested(accelerator, guard, every=1 if world == 1 else t.log_every,
                                         step=step)
            guard.save_if_due(step, t.ckpt_every, stop, accelerator.wait_for_everyone,
                              interrupted=interrupted is not None)
            if step % t.ckpt_every == 0 or step == stop or interrupted:
                tic, tic_step = time.perf_counter(), step  # steps/s counts training only
            if main and validator.due(step):
                last["val"] = validator.run(step, bare_model(accelerator, model), ema, logger, writer)
                tic, tic_step = time.perf_counter(), step
                if on_log:
                    on_log(last["val"])
            if interrupted:
                last["interrupted"] = interrupted
                break
    if guard.replaced:
        last["unreadable"] = dict(guard.replaced)
    accelerator.wait_for_everyone()
    return last


def no_items_message(config: TrainConfig, tokens: int, dataset: LatentViewDataset) -> str:
    """Why a stage has nothing to train on, with the counts of what was left out and the fix."""
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(dataset.skipped.items())) or "no shapes"
    fixes = {"no latents": "vilearn encode", "no grouping": "vilearn group",
             "no cached features": "vilearn cache-features"}
    todo = [f"'{fixes[why]} {config.dataset} ...'" for why in dataset.skipped if why in fixes]
    hint = f" (run {' and '.join(todo)})" if todo else ""
    return (f"dataset {config.dataset}: no training items at {tokens} tokens in split 'train': "
            f"{reasons}{hint}")
