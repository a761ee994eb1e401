"""``train-vae``: occupancy BCE (or TSDF regression) + KL, on Accelerate, with exact resume.

Cut into named pieces: ``build_optimizer``, ``training_step``, ``save_state`` / ``load_state``,
``train_vae``. A run folder holds::

    RUN/config.yaml        the resolved config (a resume must match it, except train.steps)
    RUN/git.txt            the git commit the run started from, when known
    RUN/log.jsonl          one JSON row per logged step and per validation
    RUN/tb/                TensorBoard events
    RUN/checkpoints/       step-XXXXXXX/{model,ema,optimizer,rng}.safetensors + meta.json, latest
    RUN/vae/               the EMA weights of the latest checkpoint (``load_vae`` reads it)
    RUN/val/step-XXXXXXX.png  reconstructions next to the ground truth

Exactness: batches, token counts and posterior noise are pure functions of (seed, step), the
LR is a pure function of the step, and model, optimizer, EMA and global RNG state are saved,
so stopping at step N and resuming reproduces the uninterrupted run bit for bit on CPU.

Faults: an unreadable shape is replaced by the next readable one (``ShapeSampler``) and
counted; SIGTERM / Ctrl-C save at the end of the step; any other exception saves the last
completed step, writes ``RUN/error.txt`` and raises ``TrainingFailed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from vilearn.config import ConfigError, from_dict, to_dict
from vilearn.engine import EMA, JSONLLogger, capture_rng_state, lr_factor, restore_rng_state
from vilearn.engine.checkpoint import (
    load_latest,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
    step_name,
)
from vilearn.engine.runtime import git_commit, resolve_precision, step_seed
from vilearn.engine.stop import TrainingGuard
from vilearn.io import clean_stale_tmp, write_text
from vilearn.vae.data import Batch, ShapeSampler, read_manifest, tsdf_targets
from vilearn.vae.loading import save_vae
from vilearn.vae.model import VecSetVAE
from vilearn.vae.train_config import TrainVAEConfig
from vilearn.vae.validate import validate


def build_optimizer(model: torch.nn.Module, config: TrainVAEConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases and norm gains do not."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    o = config.optim
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=o.lr, betas=tuple(o.betas))


def num_tokens_at(config: TrainVAEConfig, step: int) -> int:
    tokens = config.data.tokens
    return tokens[np.random.default_rng([config.train.seed, step, 1]).integers(len(tokens))]


def compute_loss(model, batch: Batch, config: TrainVAEConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction (BCE on occupancy, or MSE on TSDF) + kl_weight * KL."""
    pred, posterior = model(batch.surface, batch.queries, anchor_index=batch.anchor_index,
                            generator=generator)
    pred = pred.float()
    if config.model.label_type == "binary":
        recon = F.binary_cross_entropy_with_logits(pred, batch.labels)
    else:
        recon = F.mse_loss(pred, tsdf_targets(batch, config.data.tsdf_truncation))
    kl = posterior.kl().float().mean()
    accuracy = ((pred > 0) == (batch.labels > 0.5)).float().mean()
    return recon + config.train.kl_weight * kl, {"recon": recon.detach(), "kl": kl.detach(),
                                                 "accuracy": accuracy}


def training_step(accelerator, model, optimizer, ema: EMA, batch: Batch, config: TrainVAEConfig,
                  step: int) -> dict[str, float]:
    o = config.optim
    factor = lr_factor(step, o.warmup_steps, config.train.steps, o.decay, o.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = o.lr * factor
    generator = torch.Generator(accelerator.device).manual_seed(
        step_seed(config.train.seed, step, accelerator.process_index))
    with accelerator.autocast():
        loss, parts = compute_loss(model, batch, config, generator)
    accelerator.backward(loss)
    grad_norm = torch.zeros(())
    if accelerator.sync_gradients and o.grad_clip > 0:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(accelerator.unwrap_model(model), step)
    values = torch.stack([loss.detach().float(), *[v.float() for v in parts.values()]])
    values = accelerator.gather(values[None]).mean(dim=0)
    record = dict(zip(["loss", *parts], values.tolist(), strict=True))
    record.update(lr=o.lr * factor, grad_norm=float(grad_norm))
    return record


def save_state(out: Path, step: int, model, optimizer, ema: EMA, config: TrainVAEConfig) -> Path:
    meta = {"model_config": to_dict(config.model), "git": git_commit()}
    path = save_checkpoint(out / "checkpoints", step, {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer_to_tensors(optimizer.state_dict()),
        "rng": capture_rng_state(),
    }, meta=meta, keep=config.train.keep_checkpoints)
    save_vae(out / "vae", model, state_dict=ema.averaged(model))
    return path


STATE = ("model", "ema", "optimizer", "rng")  # what a checkpoint must hold to resume


def load_state(groups: dict, meta: dict, model, optimizer, ema: EMA) -> int:
    """Put a verified checkpoint's state (``load_checkpoint``'s output) into the run."""
    model.load_state_dict(groups["model"], strict=True)
    optimizer.load_state_dict(optimizer_from_tensors(groups["optimizer"]))
    ema.load_state_dict(groups["ema"])
    restore_rng_state(groups["rng"])
    return int(meta["step"])


def check_resume_config(out: Path, config: TrainVAEConfig) -> None:
    """A resumed run must use the config it started with (train.steps may grow)."""
    stored = from_dict(TrainVAEConfig, yaml.safe_load((out / "config.yaml").read_text()))
    a, b = to_dict(stored), to_dict(config)
    a["train"]["steps"] = b["train"]["steps"]
    for section in a:
        for key in a[section]:
            if a[section][key] != b[section][key]:
                raise ConfigError(f"{section}.{key}: {b[section][key]!r} differs from "
                                  f"{a[section][key]!r} in {out / 'config.yaml'}; resume with "
                                  f"the run's own config or choose a new --out")


def train_vae(dataset: str | Path, config: TrainVAEConfig, out: str | Path,
              max_steps: int | None = None,
              on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) a VAE run in ``out``; returns the last log and validation records.

    ``max_steps``: stop after this global step in this invocation (the schedule still spans
    ``config.train.steps``), e.g. to split a run across jobs. SIGTERM / Ctrl-C save a checkpoint
    and return with ``record["interrupted"]``; another exception saves and raises ``TrainingFailed``.
    """
    from accelerate import Accelerator

    out = Path(out)
    m = config.model
    if m.point_feats != 3 or m.downsample_ratio:
        raise ConfigError(f"model: train-vae feeds xyz + normal over data.num_surface points "
                          f"(point_feats 3, downsample_ratio 0); point_feats {m.point_feats} / "
                          f"downsample_ratio {m.downsample_ratio} (a Hunyuan3D VAE's input) is "
                          f"encoded by 'vilearn encode' but not trained here")
    t = config.train
    accelerator = Accelerator(mixed_precision=resolve_precision(t.precision))
    main = accelerator.is_main_process
    sampler = ShapeSampler(dataset, "train", config.data.num_surface, config.data.num_queries,
                           config.data.near_fraction, t.seed)
    val_sampler = None
    if read_manifest(dataset, "val"):
        val_sampler = ShapeSampler(dataset, "val", config.data.num_surface,
                                   config.data.num_queries, config.data.near_fraction, t.seed)
    torch.manual_seed(t.seed)
    model = VecSetVAE(config.model)
    optimizer = build_optimizer(model, config)
    ema = EMA(model, t.ema_decay)
    start = 0
    resumed = load_latest(out / "checkpoints", STATE)  # a damaged newest one is skipped, with a warning
    if resumed is not None:
        check_resume_config(out, config)
        start = load_state(*resumed[1:], model, optimizer, ema)
    elif main:
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        write_text(out / "git.txt", (git_commit() or "unknown") + "\n")
    if main:
        clean_stale_tmp(out, out / "vae", out / "val")
    model, optimizer = accelerator.prepare(model, optimizer)
    logger = JSONLLogger(out / "log.jsonl")
    writer = None
    if main:
        logger.truncate_after(start)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start)
    stop = min(t.steps, max_steps if max_steps is not None else t.steps)
    val_tokens = config.val.tokens or max(config.data.tokens)
    last: dict = {}
    model.train()
    tic = time.perf_counter()
    done = start
    guard = TrainingGuard(out, logger, main=main, start=start, writer=writer, save=lambda step: save_state(
        out, step, accelerator.unwrap_model(model), optimizer, ema, config))
    with guard:
        for step in range(start, stop):
            batch = sampler.batch(step, t.batch_size, num_tokens_at(config, step),
                                  accelerator.process_index, accelerator.num_processes)
            guard.note_replaced(batch.unreadable, "training shape")
            record = training_step(accelerator, model, optimizer, ema, batch.to(accelerator.device),
                                   config, step)
            done = guard.step = step + 1  # the state is now that of ``done`` completed steps
            if main and (done % t.log_every == 0 or done == stop or step == start):
                record.update(step=done, tokens=batch.anchor_index.shape[1],
                              seconds=time.perf_counter() - tic)
                if guard.replaced:
                    record["unreadable_items"] = sum(guard.replaced.values())
                logger.log(record)
                for key in ("loss", "recon", "kl", "accuracy", "lr", "grad_norm"):
                    writer.add_scalar(f"train/{key}", record[key], done)
                last["train"] = record
                if on_log:
                    on_log(record)
            interrupted = guard.save_if_due(done, t.ckpt_every, stop, accelerator.wait_for_everyone)
            if main and val_sampler and (done % t.val_every == 0 or done == t.steps):
                last["val"] = run_validation(out, done, accelerator.unwrap_model(model), ema,
                                             val_sampler, config, val_tokens, logger, writer)
                if on_log:
                    on_log(last["val"])
            if interrupted:
                last["interrupted"] = guard.received
                break
    if guard.replaced:
        last["unreadable"] = dict(guard.replaced)
    accelerator.wait_for_everyone()
    return last


def run_validation(out: Path, step: int, model, ema: EMA, sampler: ShapeSampler,
                   config: TrainVAEConfig, num_tokens: int, logger: JSONLLogger, writer) -> dict:
    """Score the EMA weights (on a copy of the model) and log the figures."""
    import copy

    averaged = copy.deepcopy(model)
    averaged.load_state_dict(ema.averaged(model))
    v = config.val
    metrics = validate(averaged, sampler, v.shapes, num_tokens, v.resolution, v.fscore_threshold,
                       v.mesh_points, png=out / "val" / f"{step_name(step)}.png",
                       posterior=v.posterior)
    record = {"step": step, "split": "val", **metrics}
    logger.log(record)
    for key in ("iou_uniform", "iou_near", "chamfer", "fscore"):
        writer.add_scalar(f"val/{key}", metrics[key], step)
    return record
