"""``vilearn train-vae``, ``encode`` and ``decode``: thin wrappers over ``vilearn.vae``."""

from __future__ import annotations

from pathlib import Path

import typer

from vilearn.cli.app import app, console, fail, parse_shard, shard_option


@app.command("train-vae")
def train_vae_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset folder (manifest.jsonl, shapes/)."),
    overrides: list[str] = typer.Argument(None, help="Config overrides: key.sub=value ..."),
    config: str = typer.Option("vae-tiny", "--config", "-c",
                               help="YAML file, or a packaged config name."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Run folder (resumes if it has checkpoints)."),
    set_: list[str] = typer.Option([], "--set", help="Another spelling of an override: --set key=value."),
    max_steps: int = typer.Option(None, "--max-steps", min=0,
                                  help="Stop after this step (the schedule keeps train.steps)."),
) -> None:
    """Train a VecSet VAE (occupancy BCE + KL) on Accelerate; resumes exactly from RUN.
    SIGTERM/Ctrl-C save first, and so does an unexpected error (exit status 1)."""
    from vilearn.config import ConfigError, load_config
    from vilearn.engine.checkpoint import CheckpointError
    from vilearn.engine.stop import TrainingFailed
    from vilearn.vae.train import train_vae
    from vilearn.vae.train_config import TrainVAEConfig

    try:
        cfg = load_config(TrainVAEConfig, config, [*(overrides or []), *set_])
    except ConfigError as error:
        raise fail(str(error)) from error
    if not (dataset / "manifest.jsonl").is_file():
        raise fail(f"{dataset}: not a prepared dataset (no manifest.jsonl)")

    def show(record: dict) -> None:
        keys = ("step", "loss", "recon", "kl", "accuracy", "lr", "iou_uniform", "iou_near",
                "chamfer", "fscore")
        console.print("  ".join(f"{k}={record[k]:.4g}" if isinstance(record[k], float)
                                else f"{k}={record[k]}" for k in keys if k in record))

    try:
        last = train_vae(dataset, cfg, out, max_steps=max_steps, on_log=show)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        raise fail(str(error)) from error
    except TrainingFailed as error:
        raise fail(f"{error}; traceback in {out / 'error.txt'}; run the same command again to "
                   "continue", code=1) from error
    if "interrupted" in last:
        console.print(f"[yellow]interrupted[/] (signal {last['interrupted']}): checkpoint saved in "
                      f"{out / 'checkpoints'}; run the same command again to continue")
        raise typer.Exit(130)
    console.print(f"[green]done[/]: weights in {out / 'vae'}")


def _parse_tokens(text: str) -> list[int]:
    try:
        tokens = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise fail(f"--tokens {text!r}: expected comma-separated integers like 256,1024") from None
    if not tokens or min(tokens) < 1:
        raise fail(f"--tokens {text!r}: token counts must be positive")
    return tokens


@app.command("encode")
def encode_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset folder."),
    vae: Path = typer.Option(..., "--vae", help="Training run, checkpoint or VAE weights."),
    tokens: str = typer.Option("256", "--tokens", help="Token counts, e.g. 256,1024."),
    surface_points: int = typer.Option(8192, "--surface-points", min=1,
                                       help="Surface samples fed to the encoder per shape (VAEs "
                                            "that read all given points: ours)."),
    points_per_token: int = typer.Option(None, "--points-per-token", min=1,
                                         help="Override a Hunyuan3D VAE's points per token "
                                              "(its downsample_ratio, 20)."),
    sharp_fraction: float = typer.Option(None, "--sharp-fraction", min=0.0, max=1.0,
                                         help="Override a Hunyuan3D VAE's share of sharp-edge "
                                              "points and tokens (2.1: 0, 2.0: 0.5)."),
    name: str = typer.Option(None, "--name",
                             help="Readable part of the latents folder <name>-<hash8> (default: "
                                  "the VAE's run or file name)."),
    device: str = typer.Option("cpu", "--device"),
    shard: str = shard_option(),
) -> None:
    """Encode every shape into latents (mean, logvar, FPS anchors) per token count, filed under
    the VAE's identity (DATASET/latents/<name>-<hash8>/); resumable. Exit status 1 when a shape
    failed (each is listed with its file and reason).

    The encoder's input is the one the VAE's config expects (points per token, uniform and
    sharp-edge samples, the sharp flag); a dataset that cannot provide it is refused.

    With --shard K/N only shard K's shapes are encoded and the statistics (stats.json) are left
    out: run once more without --shard after every shard finished (it skips what is done)."""

    from vilearn.cli.progress import ShapeTicker, print_failures, progress_bar
    from vilearn.vae.data import read_manifest
    from vilearn.vae.encode import encode_dataset, latents_dir
    from vilearn.vae.identity import latents_root, load_identified

    counts = _parse_tokens(tokens)
    part = parse_shard(shard)
    try:
        rows = [row for row in read_manifest(dataset) if part is None or part.owns(row["id"])]
        model, identity = load_identified(vae, name, device)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise fail(str(error)) from error
    if not model.config.with_encoder:
        raise fail(f"--vae {vae}: a decoder-only VAE (e.g. Hunyuan3D-2.0's) cannot encode shapes")
    with progress_bar() as bar:
        tick = ShapeTicker(bar, bar.add_task(f"encode ({identity.key})", total=len(rows), failed=0,
                                             rate=""), fresh="encoded")
        try:
            summary = encode_dataset(dataset, model, identity, counts, surface_points, shard=part,
                                     on_shape=lambda shape_id, outcome: tick(outcome),
                                     points_per_token=points_per_token, sharp_fraction=sharp_fraction)
        except ValueError as error:
            raise fail(str(error)) from error
    for path in summary.redone:
        console.print(f"  re-encoded unreadable {path}")
    print_failures(summary.failed)
    if part is not None:
        console.print(f"shard {part}: statistics left out; run again without --shard once every "
                      "shard has finished")
    for n, s in summary.stats.items():
        console.print(f"N={n}: {s['shapes']} shapes, global std {s['global_std']:.4f} -> "
                      f"{latents_dir(dataset, identity, n)}")
    console.print(f"{summary.encoded} encoded, {summary.kept} already done, {len(summary.failed)} "
                  f"failed -> {latents_root(dataset, identity)}")
    if summary.failed:
        raise typer.Exit(1)


@app.command("decode")
def decode_command(
    latents: Path = typer.Argument(..., help="A latents .safetensors file (from encode)."),
    vae: Path = typer.Option(..., "--vae", help="Training run, checkpoint or VAE weights."),
    out: Path = typer.Option(..., "--out", "-o", help="Mesh file: .glb, .obj or .ply."),
    resolution: int = typer.Option(256, "--resolution", min=8, help="Mesh extraction grid."),
    method: str = typer.Option("hierarchical", "--method", help="hierarchical or dense."),
    coarse: int = typer.Option(64, "--coarse", min=2, help="Coarse grid of the hierarchical method."),
    key: str = typer.Option("mean", "--key", help="Tensor to decode from the file."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Decode one latents file to a mesh."""
    from safetensors.torch import load_file

    from vilearn.vae.extract import latents_to_mesh
    from vilearn.vae.resolve import resolve_vae
    from vilearn.vae.surface import EXPORT_FORMATS, export_mesh

    if out.suffix.lstrip(".").lower() not in EXPORT_FORMATS:
        raise fail(f"--out {out}: use one of {', '.join(EXPORT_FORMATS)}")
    if method not in ("hierarchical", "dense"):
        raise fail(f"--method {method!r}: hierarchical or dense")
    try:
        tensors = load_file(str(latents))
        if key not in tensors:
            raise KeyError(f"{latents}: no tensor {key!r} (has {', '.join(sorted(tensors))})")
        model = resolve_vae(vae, device=device)
        mesh, grid = latents_to_mesh(model, tensors[key], method, resolution,
                                     coarse_resolution=min(coarse, resolution))
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise fail(str(error)) from error
    export_mesh(mesh, out)
    console.print(f"{out}: {len(mesh.verts)} vertices, {len(mesh.faces)} faces "
                  f"({grid.queries:,} decoder queries)")
