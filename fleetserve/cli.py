"""`fleetserve` CLI: one typer app; each concern contributes a sub-app from its own `cli` module.

Sub-apps are thin shells over library functions that tests call directly. Modules that import
heavy or process-patching libraries (vLLM, Ray, Locust) do so inside their commands, so
`fleetserve --help` stays fast.
"""

from __future__ import annotations

import typer

from cluster.k8s.cli import cli as k8s_cli
from cluster.planner.cli import plan_command
from loadtest.cli import cli as loadtest_cli
from serve_app.autoscaling.cli import cli as autoscaler_cli
from serve_app.tiny_models.cli import cli as models_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Serve LLMs on Ray Serve with vLLM.")
app.add_typer(models_cli, name="models")
# Each concern registers its sub-app here, one line each:
app.add_typer(autoscaler_cli, name="autoscaler")
app.add_typer(k8s_cli, name="k8s")
app.add_typer(loadtest_cli, name="loadtest")
app.command("plan")(plan_command)


@app.command("serve")
def serve_cmd(config: str = typer.Option(None, "--config", "-c", help="deploy.yaml; default $FLEETSERVE_CONFIG or the embedded default")) -> None:
    """Deploy the config on Ray (local, or $RAY_ADDRESS) and serve until Ctrl-C."""
    from serve_app.schema import load_config
    from serve_app.errors import FleetserveError
    from serve_app.launch import serve_forever

    from serve_app.errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    try:
        serve_forever(cfg)
    except FleetserveError as e:
        # Placement, a replica that cannot start: one message naming the model and the cause.
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the `fleetserve` console script."""
    app()


if __name__ == "__main__":
    main()
