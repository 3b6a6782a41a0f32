"""`fleetserve k8s render | apply | status | diff`: KubeRay manifests from the one config.

Thin shells over cluster.k8s.{render, schema, client, examples}. Every command validates the
config, renders and checks the manifest strictly against a CRD schema before it talks to a
cluster. Errors print one message and exit 2; `diff` exits 1 when there are changes (as
`kubectl diff` does). The kubernetes client is imported inside the commands that need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from cluster.k8s.errors import K8sError
from cluster.k8s.render import render_raycluster, render_rayservice, to_yaml
from serve_app.errors import FleetserveError

__all__ = ["cli", "default_crd_dir", "render_manifest"]

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="KubeRay RayService manifests and cluster commands.")

_REPO = Path(__file__).resolve().parents[2]
_CRD_ENV = "FLEETSERVE_KUBERAY_CRDS"

_config_opt = typer.Option(None, "--config", "-c", help="deploy.yaml; default $FLEETSERVE_CONFIG or the embedded default")
_kind_opt = typer.Option("rayservice", "--kind", help="rayservice, or raycluster (development: no Serve app)")
_ns_opt = typer.Option(None, "--namespace", "-n", help="Override kubernetes.namespace of the config")
_kubeconfig_opt = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file")
_context_opt = typer.Option(None, "--context", help="kubeconfig context")


def default_crd_dir() -> Path | None:
    """Return KubeRay's CRD directory: $FLEETSERVE_KUBERAY_CRDS, else ../shared/kuberay-crds beside the repo."""
    explicit = os.environ.get(_CRD_ENV)
    if explicit:
        return Path(explicit)
    beside = _REPO.parent / "shared" / "kuberay-crds"
    return beside if beside.is_dir() else None


def render_manifest(config_path: str | None, kind: str = "rayservice") -> dict[str, Any]:
    """Load the config and render one manifest (ConfigError / RenderError name the field)."""
    from serve_app.schema import load_config

    config = load_config(config_path)
    if kind == "rayservice":
        return render_rayservice(config)
    if kind == "raycluster":
        return render_raycluster(config)
    raise K8sError(f"--kind {kind!r}: use rayservice or raycluster")


def _fail(e: Exception) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(2)


@cli.command("render")
def render_cmd(
    config: str = _config_opt,
    kind: str = _kind_opt,
    out: Path = typer.Option(None, "--out", "-o", help="Write here instead of stdout (with --all: the k8s/ directory)"),
    all_: bool = typer.Option(False, "--all", help="Re-render every scenario of cluster/k8s/scenarios into k8s/"),
    check: bool = typer.Option(False, "--check", help="With --all: write nothing, exit 1 if k8s/ differs"),
    crd_dir: Path = typer.Option(
        None, "--crd-dir", help=f"KubeRay CRDs to validate against (default ${_CRD_ENV} or ../shared/kuberay-crds)"
    ),
) -> None:
    """Render the RayService (or dev RayCluster) of a config, validated against KubeRay's CRD schemas."""
    from cluster.k8s.schema import load_crd_schemas, validate_manifest

    try:
        crds = crd_dir or default_crd_dir()
        schemas = load_crd_schemas(crds) if crds else None
        if all_:
            _render_all(out or _REPO / "k8s", check=check, schemas=schemas)
            return
        manifest = render_manifest(config, kind)
        if schemas is not None:
            validate_manifest(manifest, schemas)
        else:
            typer.echo(f"warning: not validated: no KubeRay CRDs found (--crd-dir or ${_CRD_ENV})", err=True)
        text = to_yaml(manifest)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            typer.echo(f"wrote {out}", err=True)
        else:
            sys.stdout.write(text)
    except FleetserveError as e:
        raise _fail(e) from None


def _render_all(out: Path, *, check: bool, schemas) -> None:
    import yaml

    from cluster.k8s.examples import check_examples, render_examples, write_examples
    from cluster.k8s.schema import validate_manifest

    files = render_examples()
    if schemas is not None:
        for rel, text in files.items():
            if rel.endswith(("rayservice.yaml", "raycluster.yaml")):
                validate_manifest(yaml.safe_load(text), schemas)
    if check:
        problems = check_examples(out)
        for p in problems:
            typer.echo(p)
        if problems:
            typer.echo(f"{out} is out of date: run `fleetserve k8s render --all`", err=True)
            raise typer.Exit(1)
        return
    written = write_examples(out)
    typer.echo(f"rendered {len(written)} files into {out}", err=True)


@cli.command("apply")
def apply_cmd(
    config: str = _config_opt,
    kind: str = _kind_opt,
    namespace: str = _ns_opt,
    kubeconfig: str = _kubeconfig_opt,
    context: str = _context_opt,
    force: bool = typer.Option(False, "--force", help="Take over fields another field manager owns"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Server-side dry run: validate and show, store nothing"),
) -> None:
    """Server-side apply the rendered manifest (validated against the cluster's own CRD first)."""
    from cluster.k8s import client

    try:
        manifest = render_manifest(config, kind)
        api = client.api_client(kubeconfig, context=context)
        stored = client.validated_apply(api, manifest, namespace=namespace, force=force, dry_run=dry_run)
    except FleetserveError as e:
        raise _fail(e) from None
    meta = stored["metadata"]
    verb = "would apply" if dry_run else "applied"
    typer.echo(f"{verb} {stored['kind']} {meta['namespace']}/{meta['name']} (generation {meta.get('generation', '-')})")


@cli.command("status")
def status_cmd(
    config: str = _config_opt,
    name: str = typer.Option(None, "--name", help="RayService name; default the config's name"),
    namespace: str = _ns_opt,
    kubeconfig: str = _kubeconfig_opt,
    context: str = _context_opt,
) -> None:
    """Show the RayService's conditions and its Serve applications' status; exit 1 if not ready."""
    from cluster.k8s import client
    from serve_app.schema import load_config

    try:
        if name is None or namespace is None:
            cfg = load_config(config)
            name = name or cfg.name
            namespace = namespace or cfg.kubernetes.namespace
        st = client.status(client.api_client(kubeconfig, context=context), name, namespace)
    except FleetserveError as e:
        raise _fail(e) from None
    for line in st.lines():
        typer.echo(line)
    if not st.ready:
        raise typer.Exit(1)


@cli.command("diff")
def diff_cmd(
    config: str = _config_opt,
    kind: str = _kind_opt,
    namespace: str = _ns_opt,
    kubeconfig: str = _kubeconfig_opt,
    context: str = _context_opt,
    force: bool = typer.Option(False, "--force", help="Diff as a forced apply would change it"),
) -> None:
    """Show the fields `apply` would change in the live object; exit 1 when there are any."""
    from cluster.k8s import client

    try:
        manifest = render_manifest(config, kind)
        changes = client.diff(client.api_client(kubeconfig, context=context), manifest, namespace=namespace, force=force)
    except FleetserveError as e:
        raise _fail(e) from None
    for change in changes:
        typer.echo(change.line())
    if changes:
        raise typer.Exit(1)
    typer.echo("no changes", err=True)
