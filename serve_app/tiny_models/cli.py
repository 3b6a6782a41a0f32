"""`fleetserve models make-tiny`: build the tiny local models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

cli = typer.Typer(no_args_is_help=True, help="Local model helpers.")


@cli.command("make-tiny")
def make_tiny(
    kind: list[str] = typer.Option(["dense", "moe"], "--kind", help="dense and/or moe"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Parent dir; default $FLEETSERVE_HOME/models"),
) -> None:
    """Build the tiny dense (Mistral-style) and MoE (Mixtral-style) models with random weights."""
    from serve_app.tiny_models.build import build_tiny_model

    for k in kind:
        path = build_tiny_model(k, out_dir / f"tiny-{k}" if out_dir else None)
        typer.echo(f"built tiny:{k} -> {path}")
