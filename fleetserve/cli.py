"""`fleetserve` CLI: one typer app; each concern contributes a sub-app from its own `cli` module.

Sub-apps are thin shells over library functions that tests call directly. Modules that import
heavy or process-patching libraries (vLLM, Ray, Locust) do so inside their commands, so
`fleetserve --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

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


@app.command("check")
def check_cmd(
    config: str = typer.Option(None, "--config", "-c", metavar="FILE",
                               help="deploy.yaml; default $FLEETSERVE_CONFIG or the embedded default"),
    cluster: Path = typer.Option(None, "--cluster", metavar="FILE",
                                 help="Declared nodes to place on: `nodes: [{count: 2, cpus: 32, gpus: 8, accelerator_type: H100}]`"),
    address: str = typer.Option(None, "--address", metavar="ADDR", help="A running Ray cluster to place on (e.g. ray://head:10001)"),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as a JSON list."),
) -> None:
    """Check a deploy file without starting Ray or an engine: config, engine_args, sources, memory, placement.

    Placement is checked against --cluster, else --address, else this machine. Exit 1 on any error.

    Example: fleetserve check -c deploy.yaml --cluster nodes.yaml
    """
    import json

    from serve_app.check import check_file, load_inventory, ray_inventory
    from serve_app.errors import FleetserveError

    try:
        inventory = load_inventory(cluster) if cluster else ray_inventory(address) if address else None
    except FleetserveError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    findings = check_file(config, inventory=inventory)
    if as_json:
        typer.echo(json.dumps([{"level": f.level, "field": f.field, "message": f.message} for f in findings], indent=2))
    else:
        for f in findings:
            typer.echo(str(f))
    errors = sum(f.level == "error" for f in findings)
    if not as_json:
        typer.echo(f"{errors} error(s), {sum(f.level == 'warning' for f in findings)} warning(s)")
    if errors:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the `fleetserve` console script."""
    app()


if __name__ == "__main__":
    main()
