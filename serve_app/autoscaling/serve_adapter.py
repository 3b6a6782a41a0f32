"""Thin adapter between Ray Serve and the pure policy: context -> Observation -> decide -> (replicas, state).

The one module of serve_app.autoscaling that imports Ray. It holds no scaling logic.

Wiring, in the deployment builder:

    serve.deployment(..., **deployment_scaling_options(model_cfg.autoscaling, model=model_cfg.name))
      │  Serve imports POLICY_IMPORT_PATH and builds QueueDepthPolicy(**policy_kwargs) once, in the
      ▼  controller process, then calls it every control-loop tick (~0.1 s)
    QueueDepthPolicy(ctx) ──► observation_from_context(ctx) ──► due? ──► decide(...) ──► Decision
      │                                                                     │
      │  (target, {"fleetserve": state})  ◄──────────────────────────────────┤
      ▼                                                                     ▼
    Serve: factors (1.0), delays (0 s), bounds      AuditLog: JSON log line, gauges, audit store actor
                                                        ▲
    ingress GET /-/autoscaler/{model} ──► await fetch_history(model)

Replicas report the engine's load from `record_autoscaling_stats()` as `engine_<signal>` custom
metrics; the names come from the engine boundary (serve_app.engines.base), never spelled here.
Serve averages each over `look_back_period_s` per replica; the adapter sums counts over replicas
and averages KV usage and TTFT. Without those metrics the backlog is Serve's handle queue only.

Serve itself still short-cuts the policy while a deployment has zero running replicas and any
request (its "cold start fast path"): the wake-up from zero is then Serve's, and the audit trail
starts with the first decision once a replica runs. The pure policy wakes up the same way.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import ray

from serve_app.autoscaling.audit import AuditLog, DecisionRecord
from serve_app.autoscaling.policy import Observation, PolicyState, decide, due
from serve_app.autoscaling.shadows import evaluate as evaluate_shadows
from serve_app.schema import AutoscalingConfig
from serve_app.telemetry.metrics import AUTOSCALER_CLAMPS, AUTOSCALER_DECISIONS, AUTOSCALER_GAUGES
from serve_app.engines.base import (
    KV_USAGE, METRIC_PREFIX, RUNNING_REQUESTS, TTFT_S, WAITING_REQUESTS, WAITING_TOKENS, metric_name, signal_of_metric,
)

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

__all__ = [
    "POLICY_IMPORT_PATH", "STATE_KEY", "AUDIT_ACTOR_NAME", "AUDIT_NAMESPACE",
    "METRIC_WAITING", "METRIC_RUNNING", "METRIC_WAITING_TOKENS", "METRIC_KV_USAGE", "METRIC_TTFT_S",
    "QueueDepthPolicy", "observation_from_context", "serve_autoscaling_config", "deployment_scaling_options",
    "audit_store", "fetch_history",
]

POLICY_IMPORT_PATH = "serve_app.autoscaling.serve_adapter:QueueDepthPolicy"
STATE_KEY = "fleetserve"  # our typed state, serialized, inside Serve's policy_state dict
SHADOW_STATE_KEY = "fleetserve_shadows"  # each shadow policy's state, by name
AUDIT_ACTOR_NAME = "fleetserve-autoscaler-audit"
AUDIT_NAMESPACE = "fleetserve"

# The custom-metric names, built from the engine boundary's signal names (kept for callers and tests).
METRIC_WAITING = metric_name(WAITING_REQUESTS)
METRIC_RUNNING = metric_name(RUNNING_REQUESTS)
METRIC_WAITING_TOKENS = metric_name(WAITING_TOKENS)
METRIC_KV_USAGE = metric_name(KV_USAGE)
METRIC_TTFT_S = metric_name(TTFT_S)

# A child of Serve's logger: in the controller its handlers write the controller log (and stream
# to the driver); a logger of our own would have no handler there and drop every line.
_log = logging.getLogger("ray.serve.fleetserve.autoscaler")
_store_handle: Any = None  # fetch_history's cached handle of the audit store actor


def serve_autoscaling_config(cfg: AutoscalingConfig, *, model: str) -> dict[str, Any]:
    """Return Serve's `autoscaling_config` (a dict) that runs our policy with `cfg` for `model`.

    Serve's own delays are 0 and its factors 1: the policy owns the windows and steps, Serve only
    applies the bounds. The dict is JSON-able, so it also fits a Serve config file / RayService.
    With `cfg.policy == "serve_default"` it is Serve's request-based policy instead (no audit trail).
    """
    if cfg.policy == "serve_default":
        return _serve_default_config(cfg)
    kwargs = {"model": model, "config": cfg.model_dump(mode="json")}
    # Serve rebuilds the policy from these kwargs in the controller, where a failure would only
    # loop in its log: rebuild it here first so a bad round trip fails the deploy instead.
    AutoscalingConfig.model_validate(kwargs["config"])
    return {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "initial_replicas": cfg.start_replicas,
        "metrics_interval_s": cfg.metrics_push_interval_s,  # still the push interval in Ray 2.60
        "look_back_period_s": cfg.metrics_look_back_s,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 0.0,
        "policy": {
            "policy_function": POLICY_IMPORT_PATH,
            # Serve instantiates a class policy once with these (JSON-only) kwargs.
            "policy_kwargs": kwargs,
        },
    }


def _serve_default_config(cfg: AutoscalingConfig) -> dict[str, Any]:
    # The comparable knobs map one to one; cooldowns, step limits and panic have no Serve peer.
    out: dict[str, Any] = {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "initial_replicas": cfg.start_replicas,
        "metrics_interval_s": cfg.metrics_push_interval_s,
        "look_back_period_s": cfg.metrics_look_back_s,
        "upscale_delay_s": cfg.upscale_stabilization_s,
        "downscale_delay_s": cfg.downscale_stabilization_s,
    }
    if cfg.serve_target_ongoing_requests is not None:
        out["target_ongoing_requests"] = cfg.serve_target_ongoing_requests
    if cfg.min_replicas == 0:
        out["downscale_to_zero_delay_s"] = cfg.scale_to_zero_after_s
    return out


def deployment_scaling_options(cfg: AutoscalingConfig, *, model: str) -> dict[str, Any]:
    """Return `serve.deployment(...)` options: a fixed `num_replicas`, or the `autoscaling_config` of `cfg.policy`."""
    if cfg.is_fixed:
        return {"num_replicas": cfg.min_replicas}
    return {"autoscaling_config": serve_autoscaling_config(cfg, model=model)}


def observation_from_context(ctx: "AutoscalingContext", *, now_s: float | None = None) -> Observation:
    """Translate Serve's AutoscalingContext into the policy's Observation."""
    metrics = ctx.aggregated_metrics or {}
    _check_metric_names(metrics)

    def values(name: str) -> list[float]:
        return [float(v) for v in (metrics.get(name) or {}).values() if v is not None]

    running_replicas = int(ctx.current_num_replicas)
    target = int(ctx.target_num_replicas)
    waiting, running, tokens = values(METRIC_WAITING), values(METRIC_RUNNING), values(METRIC_WAITING_TOKENS)
    kv, ttft = values(METRIC_KV_USAGE), values(METRIC_TTFT_S)
    if not running:  # the engine does not report: Serve's ongoing requests at replicas stand in
        running = [float(ctx.total_running_requests or 0.0)]
    now = now_s if now_s is not None else (ctx.current_time if ctx.current_time is not None else time.time())
    return Observation(
        now_s=now,
        current_replicas=running_replicas,
        target_replicas=target,
        starting_replicas=max(0, target - running_replicas),
        queued_requests=max(0.0, float(ctx.total_queued_requests or 0.0)),
        waiting_requests=max(0.0, sum(waiting)),
        running_requests=max(0.0, sum(running)),
        waiting_tokens=max(0.0, sum(tokens)),
        kv_usage=min(1.0, max(0.0, sum(kv) / len(kv))) if kv else None,
        ttft_s=max(0.0, sum(ttft) / len(ttft)) if ttft else None,
    )


_warned_names: set[str] = set()


def _check_metric_names(metrics: dict[str, Any]) -> None:
    """Say so, once per name, when replicas report an `engine_*` metric this adapter does not read.

    Without this a renamed signal would leave the policy on Serve's request counts with no trace.
    """
    for name in metrics:
        if name.startswith(METRIC_PREFIX) and signal_of_metric(name) is None and name not in _warned_names:
            _warned_names.add(name)
            _log.warning("autoscaler: replicas report %r, which is no engine signal of serve_app.engines.base "
                         "(renamed on one side?); the policy ignores it", name)


class QueueDepthPolicy:
    """Serve's per-deployment policy callable; built once by Serve with `policy_kwargs`.

    publish=False keeps the audit in this process only (no metrics, no audit store actor): for tests
    and for callers outside a Ray cluster.
    """

    def __init__(self, *, model: str, config: dict[str, Any], publish: bool = True):
        self.model = model
        self.config = AutoscalingConfig.model_validate(config)
        self.audit = AuditLog(model, size=self.config.history_size, logger=_log,
                              on_record=self._publish_record if publish else None)
        self._gauges: dict[str, Any] | None = None
        self._store: Any = None
        self._publish_failed = False

    def __call__(self, ctx: "AutoscalingContext") -> tuple[int, dict[str, Any]]:
        """Return (target replicas, policy state) for one control-loop tick."""
        policy_state = dict(ctx.policy_state or {})
        state = PolicyState.from_dict(policy_state.get(STATE_KEY))
        obs = observation_from_context(ctx)
        if not due(state, obs.now_s, self.config):
            return int(ctx.target_num_replicas), policy_state  # between decisions: keep the target
        decision = decide(obs, state, self.config)
        shadows: tuple = ()
        if self.config.shadow_policies:  # same observation, recorded only: never the target
            shadows, policy_state[SHADOW_STATE_KEY] = evaluate_shadows(obs, self.config, policy_state.get(SHADOW_STATE_KEY))
        self.audit.record(decision, shadows=shadows)
        policy_state[STATE_KEY] = decision.state.to_dict()
        return decision.target_replicas, policy_state

    def _publish_record(self, rec: DecisionRecord) -> None:
        # The audit trail must never stop scaling: report the first failure, then keep going.
        try:
            self._set_gauges(rec)
            if self._store is None:
                self._store = audit_store()
            # The store serves JSON over HTTP: the record is serialized here, at that edge.
            self._store.record.remote(self.model, rec.to_json_dict(), self.config.history_size)
        except Exception as e:  # noqa: BLE001 - any Ray/metrics failure
            if not self._publish_failed:
                _log.warning("autoscaler audit publish failed for %s (decisions still apply): %r", self.model, e)
                self._publish_failed = True

    def _set_gauges(self, rec: DecisionRecord) -> None:
        from ray.util.metrics import Counter, Gauge

        if self._gauges is None:
            keys = ("model",)
            self._counters = {
                "decisions": Counter(AUTOSCALER_DECISIONS, "Decisions taken, by direction (up/down/hold).",
                                     ("model", "direction")),
                "clamps": Counter(AUTOSCALER_CLAMPS, "Clamps applied to decisions, by rule.", ("model", "clamp")),
            }
            helps = {"target_replicas": "Replica target the policy chose.",
                     "raw_desired": "Replicas wanted before clamps.",
                     "backlog": "Backlog the policy saw (requests or tokens).",
                     "panic": "1 while the policy is in panic or wake-up mode.",
                     "clamps": "Clamps applied to the last decision."}
            self._gauges = {k: Gauge(name, helps[k], keys) for k, name in AUTOSCALER_GAUGES.items()}
        tags = {"model": self.model}
        self._gauges["target_replicas"].set(rec.target_replicas, tags)
        self._gauges["raw_desired"].set(rec.raw_desired, tags)
        self._gauges["backlog"].set(rec.backlog, tags)
        self._gauges["panic"].set(1 if rec.mode != "normal" else 0, tags)
        self._gauges["clamps"].set(len(rec.clamps), tags)
        self._counters["decisions"].inc(1, {**tags, "direction": rec.direction})
        for clamp in rec.clamps:
            self._counters["clamps"].inc(1, {**tags, "clamp": clamp.name})


class _AuditStore:
    """Detached actor holding each model's recent decisions as JSON, so any replica can serve them."""

    def __init__(self) -> None:
        self._logs: dict[str, deque[dict[str, Any]]] = {}

    def record(self, model: str, rec: dict[str, Any], size: int) -> None:
        log = self._logs.get(model)
        if log is None or log.maxlen != size:
            log = self._logs[model] = deque(log or (), maxlen=size)
        log.append(rec)

    def history(self, model: str, last: int | None = None) -> dict[str, Any] | None:
        log = self._logs.get(model)
        if log is None:
            return None
        records = list(log)[-last:] if last else list(log)
        return {"model": model, "history_size": log.maxlen, "count": len(records), "decisions": records}

    def models(self) -> list[str]:
        return sorted(self._logs)


def audit_store(*, create: bool = True) -> Any:
    """Return the audit store actor's handle (created on first use when `create`), or None if absent."""
    opts = dict(name=AUDIT_ACTOR_NAME, namespace=AUDIT_NAMESPACE)
    if not create:
        try:
            return ray.get_actor(**opts)
        except ValueError:
            return None
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(_AuditStore)
    return actor_cls.options(**opts, lifetime="detached", get_if_exists=True).remote()


async def fetch_history(model: str, *, last: int | None = None) -> dict[str, Any]:
    """Return `model`'s recent decisions as the HTTP endpoint serves them (empty if none yet).

    Call from async code (an ingress replica); it awaits the store actor instead of blocking.
    """
    global _store_handle
    if _store_handle is None:  # the lookup blocks briefly; do it once per process
        _store_handle = audit_store(create=False)
    store = _store_handle
    found = await store.history.remote(model, last) if store is not None else None
    return found if found is not None else {"model": model, "history_size": 0, "count": 0, "decisions": []}
