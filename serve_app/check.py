"""`fleetserve check`: everything about a deploy file that can be known without starting Ray or an engine.

    deploy.yaml ──► config (field rules) ──► per model: engine_args (vLLM's own parser)
                                                        source (local dir / tiny / hub cache, offline)
                                                        memory fit of the layout (planner, GPUs only)
                                                        placement (bundles + strategy vs the nodes)
    nodes: a declared inventory (--cluster FILE), a running cluster (--address), else this machine

One finding per line, each naming its field; `errors` decide the exit code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from serve_app.errors import ConfigError, FleetserveError

__all__ = ["Finding", "check_file", "load_inventory", "local_inventory"]

Level = Literal["error", "warning", "ok"]


@dataclass(frozen=True)
class Finding:
    """One result of a check: its level, the field it is about and what was found."""

    level: Level
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:7} {self.field}: {self.message}" if self.field else f"{self.level:7} {self.message}"


@dataclass(frozen=True)
class Inventory:
    """The nodes placement is checked against, as Ray resource dicts, and where they came from."""

    nodes: tuple[dict[str, float], ...]
    source: str
    can_grow: bool = False  # an autoscaler may add nodes: a misfit is then a warning


def load_inventory(path: str | os.PathLike) -> Inventory:
    """Read a declared cluster: `nodes: [{count: 2, cpus: 32, gpus: 8, accelerator_type: H100}]`.

    Raises ConfigError naming the entry and field for a bad file.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([("", f"cannot read the cluster file: {e}")], source=str(p)) from e
    entries = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError([("nodes", "must be a non-empty list of {count, cpus, gpus, accelerator_type}")], source=str(p))
    nodes = []
    for i, e in enumerate(entries):
        unknown = set(e) - {"count", "cpus", "gpus", "accelerator_type", "resources"} if isinstance(e, dict) else {"?"}
        if unknown:
            raise ConfigError([(f"nodes[{i}]", f"unknown keys {sorted(unknown)}; use count, cpus, gpus, "
                                                "accelerator_type, resources")], source=str(p))
        res = {"CPU": float(e.get("cpus", 1)), **{k: float(v) for k, v in (e.get("resources") or {}).items()}}
        if e.get("gpus"):
            res["GPU"] = float(e["gpus"])
        if e.get("accelerator_type"):
            res[f"accelerator_type:{e['accelerator_type']}"] = 1.0
        nodes += [dict(res) for _ in range(int(e.get("count", 1)))]
    return Inventory(tuple(nodes), f"cluster file {p}")


def local_inventory(cpus_needed: float) -> Inventory:
    """This machine as the Ray `fleetserve serve` starts would see it (logical CPUs, nvidia-smi's GPUs)."""
    gpus = 0
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        gpus = sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU "))
    # fleetserve serve sizes a local Ray's logical CPUs to the config (cluster.ray_cluster.local_ray_cpus).
    res = {"CPU": float(max(os.cpu_count() or 1, cpus_needed))}
    if gpus:
        res["GPU"] = float(gpus)
    return Inventory((res,), f"this machine ({gpus} GPU(s) found by nvidia-smi)" if gpus else "this machine (no GPUs)")


def ray_inventory(address: str) -> Inventory:
    """The alive nodes of a running Ray cluster (connects; starts nothing)."""
    import ray

    from cluster.placement import node_resources

    ray.init(address=address, namespace="serve", logging_level="ERROR", log_to_driver=False)
    try:
        return Inventory(tuple(node_resources()), f"Ray cluster at {address}", can_grow=True)
    finally:
        ray.shutdown()


def check_file(path: str | None, *, inventory: Inventory | None = None) -> list[Finding]:
    """Check the deploy file at `path` (None: $FLEETSERVE_CONFIG or the embedded default)."""
    from serve_app.schema import load_config

    try:
        config = load_config(path)
    except ConfigError as e:
        return [Finding("error", field, msg) for field, msg in e.problems]
    findings = [Finding("ok", "", f"config {path or '(default)'}: {len(config.models)} model(s) valid")]
    if inventory is None:
        from cluster.ray_cluster import local_ray_cpus

        try:
            inventory = local_inventory(local_ray_cpus(config))
        except ConfigError:  # an `auto` layout that cannot be planned: reported per model below
            inventory = local_inventory(0)
    for i, model in enumerate(config.models):
        findings += _check_model(config, i, model, inventory)
    return findings


def _check_model(config, i: int, model, inventory: Inventory) -> list[Finding]:
    from cluster.placement import static_problem
    from cluster.planner.layout import plan_layout
    from serve_app.sources import source_status

    f = f"models[{i}]"
    out = []
    if model.engine == "vllm":
        out.append(_engine_args(model, f))
    status = source_status(model.source, network=False)
    level: Level = "error" if not status.ok else "warning" if status.needs_network else "ok"
    out.append(Finding(level, f"{f}.source", f"{model.source}: {status.note}"))
    if not status.ok:
        return out
    gpn = _per_node(inventory, model.placement.accelerator)
    try:
        layout = plan_layout(model, accelerators_per_node=model.placement.accelerators_per_node or gpn or None,
                             nodes=max(1, sum(1 for n in inventory.nodes if n.get(model.placement.accelerator))),
                             extra_accelerators=config.accelerators, where=f)
    except ConfigError as e:  # LayoutError: `auto` that cannot be planned
        return out + [Finding("error", field or f"{f}.parallelism", msg) for field, msg in e.problems]
    except FleetserveError as e:
        return out + [Finding("error", f"{f}.parallelism", str(e))]
    out += _memory(config, model, layout.parallelism, inventory, f)
    why = static_problem(list(layout.bundles), layout.strategy, list(inventory.nodes))
    par = layout.parallelism
    b = layout.bundles
    # bundle 0 also holds a CPU per extra front end (plan_layout): say so rather than show it as all of them
    shape = f"{len(b)} bundle(s) of {b[0]}" if all(x == b[0] for x in b) else f"bundle 0 of {b[0]} + {len(b) - 1} of {b[1]}"
    what = (f"{shape} with {layout.strategy} (tp={par.tensor} pp={par.pipeline} ep={par.expert} "
            f"front_ends={layout.front_ends}) on {inventory.source}")
    if why:
        level = "warning" if inventory.can_grow else "error"
        out.append(Finding(level, f"{f}.placement", f"{what}: {why}"
                           + (" (an autoscaler may add nodes)" if inventory.can_grow else "")))
    else:
        out.append(Finding("ok", f"{f}.placement", f"{what}: fits"))
    return out


def _engine_args(model, f: str) -> Finding:
    from serve_app.engines.vllm_engine import build_vllm_args
    from serve_app.errors import EngineError

    try:
        build_vllm_args(model, model_dir=model.source, parallelism=_par(model), executor="mp", field_prefix=f)
    except EngineError as e:
        msg = str(e)
        field, _, rest = msg.partition(": ")
        return Finding("error", field, rest or msg)
    return Finding("ok", f"{f}.engine_args", f"{len(model.engine_args)} argument(s) accepted by vLLM's parser")


def _par(model):
    from serve_app.schema import Parallelism

    return Parallelism() if model.parallelism == "auto" else model.parallelism


def _per_node(inventory: Inventory, accelerator: str) -> int:
    return int(max((n.get(accelerator, 0) for n in inventory.nodes), default=0))


def _memory(config, model, par, inventory: Inventory, f: str) -> list[Finding]:
    """Does one replica's layout hold its weights and KV cache? GPUs with a known accelerator type only."""
    from cluster.planner import PlannerError, plan_for_model

    p = model.placement
    if p.on_cpu:
        return []
    if not p.accelerator_type:
        return [Finding("warning", f"{f}.placement.accelerator_type",
                        "not set: memory fit not checked (set it, e.g. A100-80G, to plan memory per GPU)")]
    gpn = p.accelerators_per_node or _per_node(inventory, p.accelerator) or par.world_size
    nodes = max(1, -(-par.world_size // gpn))
    try:
        report = plan_for_model(model, nodes=nodes, gpus_per_node=gpn, accelerator=p.accelerator_type,
                                extra_accelerators=config.accelerators)
    except (PlannerError, FleetserveError) as e:
        return [Finding("warning", f"{f}.source", f"memory fit not checked: {e}")]
    for plan in report.plans:
        if (plan.layout.tp, plan.layout.pp, plan.layout.ep) == (par.tensor, par.pipeline, par.expert):
            d = plan.to_dict()
            return [Finding("ok", f"{f}.parallelism", f"memory fits on {p.accelerator_type}: {d['weights_gb_per_gpu']:.1f} GB "
                                                      f"weights + {d['kv_gb_per_gpu']:.1f} GB KV cache per GPU, "
                                                      f"{d['max_sequences_per_replica']} sequences per replica")]
    for r in report.rejected:
        if (r.layout.tp, r.layout.pp, r.layout.ep) == (par.tensor, par.pipeline, par.expert):
            return [Finding("error", f"{f}.parallelism", f"tp={par.tensor} pp={par.pipeline} ep={par.expert} on "
                                                         f"{p.accelerator_type}: {r.reason}")]
    return [Finding("warning", f"{f}.parallelism", "layout not among the planner's candidates: memory fit not checked")]
