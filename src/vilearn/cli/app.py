"""The typer application every command module registers on, and shared CLI helpers."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="vilearn",
    help="Train single-image-to-3D VecSet diffusion models with Visibility Learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a damaged checkpoint skipped, a condition image on a coloured background, ...)
    as one readable line rather than Python's file:line form."""
    console.print(f"[bold yellow]warning:[/] {message}")


@app.callback()
def main() -> None:
    """Train single-image-to-3D VecSet diffusion models with Visibility Learning."""
    import warnings

    warnings.showwarning = show_warning


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (``raise fail("...")``)."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def shard_option():
    """The ``--shard K/N`` option of the commands a cluster job array splits."""
    return typer.Option(None, "--shard", help="Only the shapes of shard K of N (K/N, K from 0): one "
                        "task of a job array; every shard's shapes are disjoint and stable.")


def parse_shard(text: str | None):
    """``--shard K/N`` -> ``vilearn.data.shards.Shard`` (None without it); a bad value fails."""
    if text is None:
        return None
    from vilearn.data.shards import Shard

    try:
        return Shard.parse(text)
    except ValueError as error:
        raise fail(str(error)) from error
