"""``vilearn train``, ``generate`` and ``export``: thin wrappers over ``vilearn.train``, ``vilearn.flow``."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail


@app.command("train")
def train_command(
    overrides: list[str] = typer.Argument(None, help="Config overrides: key.sub=value ..."),
    config: str = typer.Option(..., "--config", "-c", help="YAML file, or a packaged config name."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder."),
    set_: list[str] = typer.Option([], "--set", help="Another spelling of an override: --set key=value."),
    resume: str = typer.Option(None, "--resume", help="'latest' (this run's newest checkpoint) or a path."),
    max_steps: int = typer.Option(None, "--max-steps", min=0, help="Stop after this global step."),
) -> None:
    """Train the MM-DiT with flow matching (and VAPE) on Accelerate; SIGTERM/Ctrl-C save first,
    and so does an unexpected error (exit status 1)."""
    from vilearn.config import ConfigError, load_config
    from vilearn.engine.checkpoint import CheckpointError
    from vilearn.engine.stop import TrainingFailed
    from vilearn.train.config import TrainConfig
    from vilearn.train.trainer import train

    try:
        cfg = load_config(TrainConfig, config, [*(overrides or []), *set_])
    except ConfigError as error:
        raise fail(str(error)) from error

    def show(record: dict) -> None:
        keys = ("step", "stage", "tokens", "loss", "loss_fixed", "grad_norm", "lr", "steps_per_s",
                "unreadable_items")
        console.print("  ".join(f"{k}={record[k]:.4g}" if isinstance(record[k], float)
                                else f"{k}={record[k]}" for k in keys if k in record))

    try:
        last = train(cfg, out, resume=resume, max_steps=max_steps, on_log=show)
    except (ConfigError, FileNotFoundError, CheckpointError) as error:
        raise fail(str(error)) from error
    except TrainingFailed as error:
        raise fail(f"{error}; traceback in {out / 'error.txt'}; continue with --resume latest",
                   code=1) from error
    if "interrupted" in last:
        console.print(f"[yellow]interrupted[/] (signal {last['interrupted']}): checkpoint saved in "
                      f"{out / 'checkpoints'}; continue with --resume latest")
        raise typer.Exit(130)
    if last.get("unreadable"):
        console.print(f"[yellow]{sum(last['unreadable'].values())} training item(s) replaced[/]: "
                      f"{len(last['unreadable'])} unreadable file(s), listed in the warnings above")
    console.print(f"[green]done[/]: {out}")


def output_names(images: list[Path]) -> list[str]:
    """A distinct file name (no suffix) per input image: its stem, or, where stems clash (dataset
    views are all ``000.png``), its path from the clashing images' common folder joined by
    ``__``; the same path given twice gets ``-2``, ``-3``."""
    import os
    from collections import Counter, defaultdict

    stems = Counter(path.stem for path in images)
    groups = defaultdict(list)
    for path in images:
        groups[path.stem].append(path.resolve())
    names = []
    for path in images:
        if stems[path.stem] == 1:
            names.append(path.stem)
            continue
        common = Path(os.path.commonpath([p.parent for p in groups[path.stem]]))
        relative = path.resolve().with_suffix("").relative_to(common)
        names.append("__".join(relative.parts))
    seen: Counter = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


@app.command("generate")
def generate_command(
    images: list[Path] = typer.Argument(..., help="Condition images (RGBA, or the object on white)."),
    model: Path = typer.Option(..., "--model", "-m", help="A training run or checkpoint folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the meshes."),
    vae: str = typer.Option(None, "--vae", help="VAE to decode with (default: the run's; must be "
                                                "the same weights)."),
    tokens: int = typer.Option(None, "--tokens", min=1, help="Latent tokens (default: the last stage's)."),
    steps: int = typer.Option(50, "--steps", min=1, help="Euler steps."),
    cfg_scale: float = typer.Option(5.0, "--cfg", min=0.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", min=0),
    resolution: int = typer.Option(256, "--resolution", min=8, help="Mesh extraction grid."),
    formats: str = typer.Option("glb", "--format", help="Comma-separated: glb, obj, ply."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace meshes already in --out."),
) -> None:
    """Images -> meshes: sample latents with the trained model, decode them with the VAE.

    Each mesh is named after its image (OUT/<stem>.<format>; images with the same stem in different
    folders get their folders in the name). Existing files are not replaced without --overwrite."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from vilearn.cli.progress import progress_bar
    from vilearn.dit.preprocess import check_condition_image
    from vilearn.flow.pipeline import generate_latents
    from vilearn.train.loading import load_trained, run_vae
    from vilearn.train.validation import generated_mesh
    from vilearn.vae.surface import EXPORT_FORMATS, export_mesh

    kinds = [k.strip().lower() for k in formats.split(",") if k.strip()]
    bad = [k for k in kinds if k not in EXPORT_FORMATS]
    if not kinds or bad:
        raise fail(f"--format {formats!r}: use one or more of {', '.join(EXPORT_FORMATS)}")
    names = output_names(images)
    targets = [[out / f"{name}.{kind}" for kind in kinds] for name in names]
    existing = [str(t) for paths in targets for t in paths if t.exists()]
    if existing and not overwrite:
        raise fail(f"{existing[0]} exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
                   "pass --overwrite to replace, or choose another --out")
    loaded_images = []
    for path in images:
        try:
            with Image.open(path) as image:
                image.load()
                loaded_images.append(image.copy())
            for problem in check_condition_image(loaded_images[-1]):
                warnings.warn(f"{path}: {problem}", stacklevel=1)
        except (OSError, UnidentifiedImageError) as error:
            raise fail(f"{path}: not a readable image ({error})") from error
        except ValueError as error:
            raise fail(f"{path}: {error}") from error
    try:
        trained = load_trained(model)
        decoder, _ = run_vae(trained, vae)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from error
    n = tokens if tokens is not None else trained.tokens
    stats = trained.stats.get(n)
    if stats is None:
        raise fail(f"--tokens {n}: the run has latent statistics only for {sorted(trained.stats)}")
    if decoder.config.embed_dim != trained.model.dit.config.in_channels:
        raise fail(f"VAE/model mismatch: the VAE has {decoder.config.embed_dim} latent channels, "
                   f"the model {trained.model.dit.config.in_channels}")
    written = 0
    with progress_bar() as bar:
        task = bar.add_task("generate", total=len(images), failed=0, rate="")
        for path, image, paths in zip(images, loaded_images, targets):
            try:
                latents = generate_latents(trained.model.dit, trained.model.conditioner, [image],
                                           n_tokens=n, steps=steps, cfg_scale=cfg_scale, seed=seed,
                                           stats=stats)
            except ValueError as error:
                raise fail(f"{path}: {error}") from error
            mesh = generated_mesh(decoder, latents[0], resolution)
            for target in paths:
                export_mesh(mesh, target)
            written += 1
            bar.advance(task)
    console.print(f"[green]{written} mesh(es)[/] in {out}: "
                  + ", ".join(p.name for paths in targets[:4] for p in paths[:1])
                  + (" ..." if len(targets) > 4 else ""))


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="A fine-tuning run (init.dit set) or one of its checkpoints."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the released layout."),
    fp32: bool = typer.Option(False, "--fp32", help="float32 model.* files instead of float16 "
                                                    "model.fp16.* (as released)."),
) -> None:
    """A fine-tuned run -> a released denoiser folder like its init.dit: EMA weights, LoRA
    adapters merged, config.yaml, the VAE part and the DINOv2 weights; hy3dgen loads it as the
    original, and init.dit can start from it."""
    from vilearn.config import ConfigError
    from vilearn.io import read_json
    from vilearn.train.export import export_run

    try:
        path = export_run(run, out, half=not fp32)
    except (ConfigError, FileNotFoundError, FileExistsError) as error:
        raise fail(str(error)) from error
    if read_json(out / "vilearn.json")["vape"] != "none":
        console.print("[yellow]note[/]: the released layout has no VAPE; the released loaders run "
                      "these weights without it (VAPE's own tensors, if any, are in vape.safetensors)")
    console.print(f"[green]exported[/] {path}")
