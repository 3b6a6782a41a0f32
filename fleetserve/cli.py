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

class _Cli(typer.core.TyperGroup):
    """The root command: gives every sub-command real placeholders before it parses or prints help."""

    def make_context(self, info_name, args, parent=None, **extra):
        if parent is None:
            _polish(self)
        return super().make_context(info_name, args, parent=parent, **extra)


app = typer.Typer(cls=_Cli, no_args_is_help=True, add_completion=False, help="Serve LLMs on Ray Serve with vLLM.",
                  epilog="Start: fleetserve check -c deploy.yaml, then fleetserve serve -c deploy.yaml")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"fleetserve {version('fleetserve')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("fleetserve (not installed)")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print fleetserve's version and exit.")) -> None:
    """Serve LLMs on Ray Serve with vLLM."""
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


def _placeholder(param) -> str:
    """A real placeholder for `param`'s value (Typer's default shows the Python type, e.g. <str>)."""
    desc = param.type_descriptor
    ann = desc.annotation
    if desc.is_path:
        return "PATH"
    if ann is int:
        return "N"
    if ann is float:
        return "NUM"
    return (param.name or "value").upper().replace("_", "-")


def _polish(cmd) -> None:
    """Give every option a placeholder (flags none), recursively."""
    for p in cmd.params:
        if isinstance(p, typer.core.TyperArgument):
            # Typer prints an argument's name and then its type again (`PATH <path>`): the name says it.
            p.metavar = p.metavar or (p.name or "arg").upper()
            p.display_type_rich = lambda ctx: None
            # Usage line: `report SWEEP_DIR`, as click and argparse print it, not `{SWEEP_DIR}`.
            p._usage_display_name = (lambda a=p: (a.metavar if a.required else f"[{a.metavar}]")
                                     + ("..." if a.nargs != 1 else ""))
        elif getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.metavar = ""
        elif p.metavar is None and hasattr(p, "type_descriptor"):
            p.metavar = _placeholder(p)
    original = cmd.get_help_option  # built per context, so it is patched where it is made

    def help_option(ctx, _original=original):
        opt = _original(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = help_option
    for sub in getattr(cmd, "commands", {}).values():
        _polish(sub)


def main() -> None:
    """Entry point of the `fleetserve` console script."""
    app(prog_name="fleetserve")


if __name__ == "__main__":
    main()
