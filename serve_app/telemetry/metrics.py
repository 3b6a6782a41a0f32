"""fleetserve's Prometheus metrics, exported through Ray's metrics agent: one endpoint per node.

    replica / router / controller ──ray.util.metrics──► the node's Ray metrics agent
        ──► http://<node>:<metrics_export_port>/metrics   (KubeRay: port 8080, PodMonitor `metrics`)

Every process's series carry its labels, so one scrape per node sees every replica, and a
PromQL `sum by (model)` aggregates over replicas. Ray prefixes each name with `ray_`.

    name (as scraped)                                   labels                        from
    ray_vllm_*  (vLLM's names, e.g. time_to_first_token_seconds, e2e_request_latency_seconds,
                 inter_token_latency_seconds, request_queue_time_seconds, prompt_tokens_total,
                 generation_tokens_total, num_requests_waiting, kv_cache_usage_perc)
                                                        model_name, ReplicaId, layout vLLM's own stat logger
    ray_fleetserve_engine_<signal>                      model, replica, layout        EngineStats (base.SIGNALS)
    ray_fleetserve_requests_refused_total               model, replica, status, reason   gate 429, guard/router 503
    ray_fleetserve_front_ends                           model, replica, state (configured/alive)  the replica's front ends
    ray_fleetserve_autoscaler_<gauge>                   model                         the policy adapter
    ray_fleetserve_autoscaler_decisions_total           model, direction (up/down/hold)  the policy adapter
    ray_fleetserve_autoscaler_clamps_applied_total      model, clamp                  the policy adapter

`ENGINE_SIGNAL_METRICS`, `REFUSED` and `AUTOSCALER_*` are the names the adapter, the dashboard
and tests import; `scraped_names()` is every fleetserve name as Prometheus sees it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from serve_app.engines.base import SIGNALS, EngineStats, metric_name

__all__ = ["AUTOSCALER_CLAMPS", "AUTOSCALER_DECISIONS", "AUTOSCALER_GAUGES", "ENGINE_SIGNAL_METRICS", "FRONT_ENDS", "REFUSED",
           "RAY_PREFIX", "scraped_names", "Refusals", "report_engine_signals",
           "vllm_stat_logger", "layout_label", "replica_id"]

log = logging.getLogger("ray.serve")

RAY_PREFIX = "ray_"  # Ray's metrics agent prefixes every application metric
_OURS = "fleetserve_"
ENGINE_SIGNAL_METRICS = {s: _OURS + metric_name(s) for s in SIGNALS}  # e.g. fleetserve_engine_waiting_tokens
REFUSED = _OURS + "requests_refused"  # a counter: scraped as ray_fleetserve_requests_refused_total
FRONT_ENDS = _OURS + "front_ends"  # a gauge by state: configured, alive (models[].front_ends; alive < configured = degraded)
# The policy adapter's metrics (serve_app/autoscaling/serve_adapter.py): one gauge per field of
# the last decision, and two counters (scraped with `_total`).
AUTOSCALER_GAUGES = {
    "target_replicas": _OURS + "autoscaler_target_replicas",
    "raw_desired": _OURS + "autoscaler_raw_desired_replicas",
    "backlog": _OURS + "autoscaler_backlog",
    "panic": _OURS + "autoscaler_panic",
    "clamps": _OURS + "autoscaler_clamps",
}
AUTOSCALER_DECISIONS = _OURS + "autoscaler_decisions"  # labels model, direction
AUTOSCALER_CLAMPS = _OURS + "autoscaler_clamps_applied"  # labels model, clamp
_COUNTERS = (REFUSED, AUTOSCALER_DECISIONS, AUTOSCALER_CLAMPS)
_SIGNAL_PERIOD_S = 1.0


def scraped_names() -> frozenset[str]:
    """Every fleetserve metric as a scrape names it: Ray's prefix, and `_total` on counters."""
    gauges = (*ENGINE_SIGNAL_METRICS.values(), *AUTOSCALER_GAUGES.values(), FRONT_ENDS)
    return frozenset([RAY_PREFIX + g for g in gauges] + [RAY_PREFIX + c + "_total" for c in _COUNTERS])


def layout_label(parallelism: Any, executor: str) -> str:
    """The `layout` label of a replica: tp2-pp1-ep1/mp."""
    return f"tp{parallelism.tensor}-pp{parallelism.pipeline}-ep{parallelism.expert}/{executor}"


def replica_id() -> str:
    """This Serve replica's id ('' outside Serve): the same value vLLM's metrics carry as ReplicaId."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not in a replica (router process before start, tests)
        return ""


class Refusals:
    """Counts refused requests by status and reason (429 key limits, 503 shed or unavailable)."""

    def __init__(self, *, model: str | None, replica: str):
        from ray.util.metrics import Counter

        self._tags = {"model": model or "", "replica": replica}
        self._counter = Counter(REFUSED, "Requests refused by fleetserve's limits (429) or shed (503), by reason.",
                                tag_keys=("model", "replica", "status", "reason"))
        self._lock = threading.Lock()

    def __call__(self, status: int, reason: str, model: str | None = None) -> None:
        tags = {**self._tags, "status": str(status), "reason": reason}
        if model:
            tags["model"] = model
        with self._lock:
            self._counter.inc(1, tags=tags)


async def report_engine_signals(stats: Callable[[], EngineStats], *, model: str, replica: str, layout: str,
                                front_ends: Callable[[], dict | None] | None = None) -> None:
    """Set the engine-signal gauges (and, given `front_ends`, the front-end gauge) every second, forever."""
    from ray.util.metrics import Gauge

    tags = {"model": model, "replica": replica, "layout": layout}
    gauges = {s: Gauge(name, f"Engine signal `{s}` (serve_app.engines.base) of one replica.",
                       tag_keys=tuple(tags)) for s, name in ENGINE_SIGNAL_METRICS.items()}
    fe_gauge = Gauge(FRONT_ENDS, "OpenAI front-end processes of one replica's engine, configured and alive.",
                     tag_keys=("model", "replica", "state"))
    while True:
        try:
            snap = stats()
            for s, g in gauges.items():
                g.set(float(getattr(snap, s)), tags=tags)
            if front_ends is not None and (fe := front_ends()) is not None:
                for state, value in (("configured", fe["front_ends"]), ("alive", fe["alive"])):
                    fe_gauge.set(float(value), tags={"model": model, "replica": replica, "state": state})
        except Exception as e:  # noqa: BLE001 - metrics must never take the replica down
            log.warning("fleetserve: engine signal metrics failed: %r", e)
        await asyncio.sleep(_SIGNAL_PERIOD_S)  # a reporting period, not a wait for a condition


def vllm_stat_logger(layout: str):
    """vLLM's Ray stat logger (vLLM's metric names through Ray's agent) with a `layout` label added."""
    from vllm.v1.metrics import ray_wrappers as rw

    class _WithLayout:
        @staticmethod
        def _get_tag_keys(labelnames):
            return (*rw.RayPrometheusMetric._get_tag_keys(labelnames), "layout")

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._tags = {**self._tags, "layout": layout}

        def _build_tags(self, *labels, **kw):
            kw.update(zip(self.metric._tag_keys, labels))  # positional labels, by vLLM's order
            return {**super()._build_tags(**kw), "layout": layout}

    class Gauge(_WithLayout, rw.RayGaugeWrapper):
        pass

    class Counter(_WithLayout, rw.RayCounterWrapper):
        pass

    class Histogram(_WithLayout, rw.RayHistogramWrapper):
        pass

    class LayoutStatLogger(rw.RayPrometheusStatLogger):
        _gauge_cls = Gauge
        _counter_cls = Counter
        _histogram_cls = Histogram

    return LayoutStatLogger
