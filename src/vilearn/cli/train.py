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
    resume: str = typer.Option(None, "--resume", help="'latest' (this run's newest checkpoint) or a path."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this global step."),
) -> None:
    """Train the MM-DiT with flow matching (and VAPE) on Accelerate; SIGTERM/Ctrl-C save first."""
    from vilearn.config import ConfigError, load_config
    from vilearn.train.config import TrainConfig
    from vilearn.train.trainer import train

    try:
        cfg = load_config(TrainConfig, config, overrides or [])
    except ConfigError as error:
        raise fail(str(error)) from error

    def show(record: dict) -> None:
        keys = ("step", "stage", "tokens", "loss", "loss_fixed", "grad_norm", "lr", "steps_per_s")
        console.print("  ".join(f"{k}={record[k]:.4g}" if isinstance(record[k], float)
                                else f"{k}={record[k]}" for k in keys if k in record))

    try:
        last = train(cfg, out, resume=resume, max_steps=max_steps, on_log=show)
    except (ConfigError, FileNotFoundError) as error:
        raise fail(str(error)) from error
    if "interrupted" in last:
        console.print(f"[yellow]interrupted[/] (signal {last['interrupted']}): checkpoint saved in "
                      f"{out / 'checkpoints'}; continue with --resume latest")
        raise typer.Exit(130)
    console.print(f"[green]done[/]: {out}")


@app.command("generate")
def generate_command(
    images: list[Path] = typer.Argument(..., help="Condition images (RGBA, or the object on white)."),
    model: Path = typer.Option(..., "--model", "-m", help="A training run or checkpoint folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the meshes."),
    vae: str = typer.Option(None, "--vae", help="VAE to decode with (default: the run's)."),
    tokens: int = typer.Option(None, "--tokens", help="Latent tokens (default: the last stage's)."),
    steps: int = typer.Option(50, "--steps", help="Euler steps."),
    cfg_scale: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed"),
    resolution: int = typer.Option(256, "--resolution", help="Mesh extraction grid."),
    formats: str = typer.Option("glb", "--format", help="Comma-separated: glb, obj, ply."),
) -> None:
    """Images -> meshes: sample latents with the trained model, decode them with the VAE."""
    from PIL import Image, UnidentifiedImageError

    from vilearn.cli.progress import progress_bar
    from vilearn.flow.pipeline import generate_latents
    from vilearn.train.loading import load_trained
    from vilearn.train.validation import generated_mesh
    from vilearn.vae.resolve import resolve_vae
    from vilearn.vae.surface import EXPORT_FORMATS, export_mesh

    kinds = [k.strip().lower() for k in formats.split(",") if k.strip()]
    bad = [k for k in kinds if k not in EXPORT_FORMATS]
    if not kinds or bad:
        raise fail(f"--format {formats!r}: use one or more of {', '.join(EXPORT_FORMATS)}")
    loaded_images = []
    for path in images:
        try:
            with Image.open(path) as image:
                image.load()
                loaded_images.append(image.copy())
        except (OSError, UnidentifiedImageError) as error:
            raise fail(f"{path}: not a readable image ({error})") from error
    try:
        trained = load_trained(model)
        decoder = resolve_vae(vae or trained.config.vae)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from error
    n = tokens or trained.tokens
    stats = trained.stats.get(n)
    if stats is None:
        raise fail(f"--tokens {n}: the run has latent statistics only for {sorted(trained.stats)}")
    if decoder.config.embed_dim != trained.model.dit.config.in_channels:
        raise fail(f"VAE/model mismatch: the VAE has {decoder.config.embed_dim} latent channels, "
                   f"the model {trained.model.dit.config.in_channels}")
    with progress_bar() as bar:
        task = bar.add_task("generate", total=len(images), failed=0, rate="")
        for path, image in zip(images, loaded_images):
            try:
                latents = generate_latents(trained.model.dit, trained.model.conditioner, [image],
                                           n_tokens=n, steps=steps, cfg_scale=cfg_scale, seed=seed,
                                           stats=stats)
            except ValueError as error:
                raise fail(f"{path}: {error}") from error
            mesh = generated_mesh(decoder, latents[0], resolution)
            for kind in kinds:
                export_mesh(mesh, out / f"{path.stem}.{kind}")
            bar.advance(task)
    console.print(f"[green]{len(images)} mesh(es)[/] in {out}")


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
