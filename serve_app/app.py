"""Build the Serve application from the one config. The only place that binds deployments.

    AppConfig ──► per model: plan_layout ──► Layout (bundles, strategy, executor) ──► ModelServer.options(...)
              └─► one model and ingress=auto: ModelServer is the ingress (direct HTTP)
                  several models or ingress=router: Router.bind({name: handle})
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

import ray
from ray import serve
from ray.serve import Application

from cluster.planner.layout import Layout, plan_layout
from cluster.ray_cluster import ensure_ray
from cluster.ray_env import CPU_ENGINE_ENV
from serve_app.autoscaling.serve_adapter import deployment_scaling_options
from serve_app.engines.registry import engine_class
from serve_app.schema import TINY_PREFIX, AppConfig, ModelConfig, load_config, parse_config, resolve_local_dir
from serve_app.errors import ConfigError

__all__ = ["build_application", "build_app_from_args", "layout_for", "deployment_options", "deployment_name"]

log = logging.getLogger(__name__)


def _accelerator_nodes(model: ModelConfig) -> list[int]:
    """Accelerators of `model`'s kind on each alive node that has any (empty without Ray)."""
    if not ray.is_initialized():
        return []
    counts = [int(n["Resources"].get(model.placement.accelerator, 0)) for n in ray.nodes() if n.get("Alive")]
    return [c for c in counts if c > 0]


def layout_for(model: ModelConfig, *, accelerators_per_node: int | None = None,
               extra_accelerators: tuple = (), where: str = "models[?]") -> Layout:
    """Resolve `model`'s layout (cluster.planner.plan_layout) for the cluster Ray is connected to.

    Nodes of `accelerators_per_node`, else placement.accelerators_per_node, else the largest live
    node's count. Raises LayoutError (a ConfigError) naming `<where>.parallelism` when `auto` cannot be planned.
    """
    nodes = _accelerator_nodes(model)
    per_node = accelerators_per_node or model.placement.accelerators_per_node or (max(nodes) if nodes else None)
    return plan_layout(model, accelerators_per_node=per_node, nodes=max(1, len(nodes)),
                       extra_accelerators=extra_accelerators, where=where)


def deployment_name(model: ModelConfig) -> str:
    """Return the Serve deployment name of `model`'s replicas."""
    return "model-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model.name)


def deployment_options(model: ModelConfig, layout: Layout) -> dict[str, Any]:
    """Return the `serve.deployment(...).options()` kwargs of `model`'s deployment."""
    env = dict(CPU_ENGINE_ENV) if model.placement.on_cpu else {}
    env.update(model.env)
    bundle0 = layout.bundles[0]
    opts: dict[str, Any] = {
        "name": deployment_name(model),
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


def build_application(config: AppConfig, *, check_placement: bool = True,
                      engines: Mapping[str, Any] | None = None,
                      layouts: Sequence[Layout] | None = None,
                      cluster_can_grow: bool | None = None) -> Application:
    """Return the Serve application for `config`.

    `engines` maps engine names (models[].engine) to engine classes over the registry's
    (serve_app.engines.registry), e.g. a benchmark's variant; each model's replicas get its class.
    `layouts`: the models' layouts when the caller resolved them already (the sweep records its
    own), in config order; else each is resolved here, once.

    With Ray connected (it connects to $RAY_ADDRESS or starts locally first), each model's
    placement group is probed and a placement no node can hold raises PlacementError within
    `placement.schedule_timeout_s` instead of hanging the deploy. On a Ray started by this
    process (`cluster_can_grow` False; default: whether ensure_ray started it) no autoscaler can
    add nodes, so a placement the nodes can never hold fails at once.
    """
    from cluster.placement import check_schedulable
    from serve_app.deployment import DirectModelServer, ModelServer, ReplicaSpec
    from serve_app.ingress.router import Router

    from serve_app.ingress.gate import OPENAI_ROUTES, ROUTER_ROUTES, GateSpec

    session = ensure_ray(config)
    can_grow = not session.started if cluster_can_grow is None else cluster_can_grow
    direct = config.direct_ingress
    bound = {}
    for i, m in enumerate(config.models):
        layout = layouts[i] if layouts else layout_for(m, extra_accelerators=config.accelerators, where=f"models[{i}]")
        if check_placement:
            check_schedulable(model=m.name, bundles=list(layout.bundles), strategy=layout.strategy,
                              timeout_s=m.placement.schedule_timeout_s, can_grow=can_grow)
        engine = (engines or {}).get(m.engine) or engine_class(m.engine)
        spec = ReplicaSpec(model=m, model_index=i, model_dir=_model_dir(m), layout=layout, engine=engine,
                           telemetry=config.telemetry,
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
