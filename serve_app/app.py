"""Build the Serve application from the one config. The only place that binds deployments.

    AppConfig ──► per model: layout (bundles, strategy, executor) ──► ModelServer.options(...)
              └─► one model and ingress=auto: ModelServer is the ingress (direct HTTP)
                  several models or ingress=router: Router.bind({name: handle})
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from cluster.ray_env import free_local_port, local_fast_path_env
from serve_app.autoscaling.serve_adapter import deployment_scaling_options
from serve_app.schema import AppConfig, ModelConfig, Parallelism, parse_config, load_config, resolve_local_dir
from serve_app.schema import TINY_PREFIX
from serve_app.errors import ConfigError

__all__ = ["build_application", "build_app_from_args", "Layout", "layout_for", "deployment_options", "ensure_ray"]

log = logging.getLogger(__name__)

# vLLM on the CPU fails at start without these (see README "CPU stack"); users may override.
_CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@dataclass(frozen=True)
class Layout:
    """Where one replica of a model runs."""

    parallelism: Parallelism
    bundles: tuple[dict[str, float], ...]
    strategy: str
    executor: str  # vLLM distributed executor: "mp" or "ray"


def _accelerator_nodes(model: ModelConfig) -> list[int]:
    """Accelerators of `model`'s kind on each alive node that has any (empty without Ray)."""
    if not ray.is_initialized():
        return []
    counts = [int(n["Resources"].get(model.placement.accelerator, 0)) for n in ray.nodes() if n.get("Alive")]
    return [c for c in counts if c > 0]


def layout_for(model: ModelConfig, *, accelerators_per_node: int | None = None,
               extra_accelerators: tuple = ()) -> Layout:
    """Resolve parallelism (planning `parallelism: auto`), bundles, strategy and executor of one replica.

    Bundles and strategy come from the capacity planner (cluster.planner): STRICT_PACK when the
    replica fits one node, else PACK (pipeline stages cross nodes, which needs vLLM's ray
    executor on GPUs). On the CPU the executor is always mp: vLLM refuses ray there.
    `accelerators_per_node` defaults to placement.accelerators_per_node, else the live cluster's.
    """
    from cluster.planner import bundles_for, resolve_parallelism, strategy_for

    p = model.placement
    nodes = _accelerator_nodes(model)
    per_node = accelerators_per_node or p.accelerators_per_node or (max(nodes) if nodes else None)
    par = model.parallelism
    if par == "auto":
        if not p.on_cpu and not (p.accelerator_type and per_node):
            raise ConfigError([(
                "models[].parallelism",
                f"{model.name}: parallelism: auto needs placement.accelerator_type (e.g. A100-80G) and the accelerators "
                "per node (placement.accelerators_per_node or a live cluster) to plan a layout; or set tensor/pipeline",
            )])
        par, _ = resolve_parallelism(model, nodes=max(1, len(nodes)), gpus_per_node=per_node or 1,
                                     accelerator=p.accelerator_type or "CPU", extra_accelerators=extra_accelerators)
    executor = p.executor
    if executor == "auto":
        executor = "mp" if p.on_cpu or par.world_size == 1 else "ray"
    strategy = strategy_for(par, p, accelerators_per_node=per_node)
    return Layout(par, tuple(bundles_for(par, p)), strategy, executor)


def deployment_options(model: ModelConfig, layout: Layout) -> dict[str, Any]:
    """Return the `serve.deployment(...).options()` kwargs of `model`'s deployment."""
    env = dict(_CPU_ENV_DEFAULTS) if model.placement.on_cpu else {}
    env.update(model.env)
    bundle0 = layout.bundles[0]
    opts: dict[str, Any] = {
        "name": "model-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model.name),
        "placement_group_bundles": [dict(b) for b in layout.bundles],
        "placement_group_strategy": layout.strategy,
        # The replica actor takes bundle 0's CPU; its engine workers take the accelerators.
        "ray_actor_options": {"num_cpus": min(1.0, bundle0.get("CPU", 0.0)), "num_gpus": 0, "runtime_env": {"env_vars": env}},
        "max_ongoing_requests": model.max_ongoing_requests,
        # A dead engine fails the check at once (a flag); Serve replaces the replica after 3 misses.
        "health_check_period_s": model.health_check_period_s,
        "health_check_timeout_s": 60,
        # Scale-down and upgrades: the replica stops taking requests and finishes in-flight ones first.
        "graceful_shutdown_wait_loop_s": 1,
        "graceful_shutdown_timeout_s": model.graceful_shutdown_timeout_s,
    }
    if model.limits.max_queued_requests is not None:
        # Serve's own bounded queue: past it a 503 with Retry-After, not unbounded waiting.
        opts["max_queued_requests"] = model.limits.max_queued_requests
        opts["backpressure_config"] = {"status_code": 503, "retry_after_s": model.limits.retry_after_s}
    # Fixed count, or our queue-depth policy registered as Serve's AutoscalingPolicy.
    opts.update(deployment_scaling_options(model.autoscaling, model=model.name))
    return opts


def _model_dir(model: ModelConfig) -> str:
    if model.engine == "sim":
        return ""  # the simulator reads no weights
    if model.source.startswith(TINY_PREFIX):
        from serve_app.tiny_models import ensure_tiny_model

        return str(ensure_tiny_model(model.source[len(TINY_PREFIX):]))
    local = resolve_local_dir(model.source)
    return str(local) if local else model.source  # hub id: vLLM fetches it on the cluster


def _world_size(model: ModelConfig) -> int:
    return 1 if model.parallelism == "auto" else model.parallelism.world_size


def ensure_ray(config: AppConfig) -> None:
    """Connect to $RAY_ADDRESS, or start a local Ray sized for `config` when none is given."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, namespace="serve")
        return
    # Logical CPUs: vLLM's CPU workers pin their own threads, Ray's count is bookkeeping.
    need = sum(m.placement.cpus_per_worker * _world_size(m) * m.autoscaling.max_replicas for m in config.models)
    for key, value in local_fast_path_env(config).items():
        # Inherited by the Ray processes started next. A user's own setting wins, except for
        # ports: they are this instance's own, and one left by an earlier Ray would be shared.
        if key.endswith("_PORT") or key not in os.environ:
            os.environ[key] = value
    # address="local": never attach to some other Ray that happens to run on this machine.
    # Ray's metrics export port is the one Prometheus endpoint of this node (serve_app.telemetry.metrics).
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(need) + 2), namespace="serve",
             include_dashboard=config.local_ray.dashboard,
             _metrics_export_port=config.local_ray.metrics_export_port or free_local_port())


def build_application(config: AppConfig, *, check_placement: bool = True) -> Application:
    """Return the Serve application for `config`.

    With Ray connected (it connects to $RAY_ADDRESS or starts locally first), each model's
    placement group is probed and a placement no node can hold raises PlacementError within
    `placement.schedule_timeout_s` instead of hanging the deploy.
    """
    from cluster.placement import check_schedulable
    from serve_app.deployment import DirectModelServer, ModelServer, ReplicaSpec
    from serve_app.ingress.router import Router

    from serve_app.ingress.gate import OPENAI_ROUTES, ROUTER_ROUTES, GateSpec

    ensure_ray(config)
    direct = config.direct_ingress
    bound = {}
    for i, m in enumerate(config.models):
        layout = layout_for(m, extra_accelerators=config.accelerators)
        if check_placement:
            check_schedulable(model=m.name, bundles=list(layout.bundles), strategy=layout.strategy,
                              timeout_s=m.placement.schedule_timeout_s)
        spec = ReplicaSpec(model=m, model_index=i, model_dir=_model_dir(m), parallelism=layout.parallelism,
                           executor=layout.executor, telemetry=config.telemetry,
                           gate=GateSpec.from_config(config, routes=OPENAI_ROUTES) if direct else None)
        cls = DirectModelServer if direct else ModelServer
        bound[m.name] = serve.deployment(cls).options(**deployment_options(m, layout)).bind(spec)
    if direct:
        return next(iter(bound.values()))
    router = serve.deployment(Router).options(
        name="router", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100_000
    )
    return router.bind(bound, GateSpec.from_config(config, routes=ROUTER_ROUTES), config.telemetry)


def build_app_from_args(args: dict[str, Any]) -> Application:
    """Serve builder body: `config` is a YAML path or the config mapping itself (RayService args)."""
    unknown = set(args) - {"config"}
    if unknown:
        raise ConfigError([(k, "unknown builder argument; the only one is `config`") for k in sorted(unknown)],
                          source="builder args")
    cfg = args.get("config")
    config = parse_config(cfg, source="builder args config") if isinstance(cfg, dict) else load_config(cfg)
    return build_application(config)
