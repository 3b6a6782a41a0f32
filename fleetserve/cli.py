"""`fleetserve` CLI: one typer app; each concern contributes a sub-app from its own `cli` module.

Sub-apps are thin shells over library functions that tests call directly. Modules that import
heavy or process-patching libraries (vLLM, Ray, Locust) do so inside their commands, so
`fleetserve --help` stays fast.
"""

from __future__ import annotations

import typer

from serve_app.tiny_models.cli import cli as models_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Serve LLMs on Ray Serve with vLLM.")
app.add_typer(models_cli, name="models")
# Each concern registers its sub-app here, one line each:


def main() -> None:
    """Entry point of the `fleetserve` console script."""
    app()


if __name__ == "__main__":
    main()
