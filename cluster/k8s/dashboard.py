"""The Grafana dashboard of a fleetserve app, as a plain dict (k8s/grafana-dashboard.json).

It reads only what the app exports through Ray's metrics agent (serve_app/telemetry/metrics.py),
with the names and labels a scrape of the node's metrics export port shows (Ray adds `ray_`):

    ray_vllm_*               vLLM's own metrics, label model_name (and ReplicaId, layout)
    ray_fleetserve_*         engine signals, refusals and the autoscaler, label model
    ray_serve_*              Serve's replicas and handle queues, labels application, deployment

Every metric named here exists in a real scrape (tests/test_observability_live.py) and is one
the code declares (tests/test_dashboard.py). Serve labels a model by its deployment
(`model-<name>`, serve_app.app.deployment_name): `label_replace` gives those series a `model`
label so replicas and the policy's target share a legend.
"""

from __future__ import annotations

from typing import Any

from serve_app.telemetry.metrics import (
    AUTOSCALER_CLAMPS, AUTOSCALER_DECISIONS, AUTOSCALER_GAUGES, ENGINE_SIGNAL_METRICS, RAY_PREFIX, REFUSED,
)

__all__ = ["grafana_dashboard"]

_DS = {"type": "prometheus", "uid": "${datasource}"}
_APP = 'application=~"$application"'
_RATE = "[$__rate_interval]"
_WAITING_TOKENS = RAY_PREFIX + ENGINE_SIGNAL_METRICS["waiting_tokens"]
_TARGET = RAY_PREFIX + AUTOSCALER_GAUGES["target_replicas"]
_DECISIONS = RAY_PREFIX + AUTOSCALER_DECISIONS + "_total"


def _vllm(metric: str) -> str:
    """vLLM's metric `metric` as exported through Ray's agent (vllm:x is scraped as ray_vllm_x)."""
    return f"ray_vllm_{metric}"


def _ours(metric: str) -> str:
    return RAY_PREFIX + metric


def _quantiles(histogram: str) -> list[tuple[str, str]]:
    """p50 and p95 per model of one vLLM histogram, summed over replicas."""
    return [(f"histogram_quantile({q}, sum by (le, model_name) (rate({_vllm(histogram)}_bucket{_RATE})))",
             f"p{int(q * 100)} {{{{model_name}}}}") for q in (0.5, 0.95)]


def _by_model(expr: str) -> str:
    """A Serve series (label deployment=model-<name>) with a `model` label beside it."""
    return f'label_replace({expr}, "model", "$1", "deployment", "model-(.+)")'


# (row title, [(title, unit, [(expr, legend)], description)])
_ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("Requests per model (vLLM)", [
        ("Time to first token", "s", _quantiles("time_to_first_token_seconds"),
         "Arrival at the engine to the first output token: queue time plus prefill."),
        ("Inter-token latency", "s", _quantiles("inter_token_latency_seconds"),
         "Time between two output tokens of a stream (decode speed as a client sees it)."),
        ("End-to-end latency", "s", _quantiles("e2e_request_latency_seconds"),
         "Arrival at the engine to the last token."),
        ("Queue time", "s", _quantiles("request_queue_time_seconds"),
         "Time a request waited in the engine's scheduler before its prefill started."),
        ("Tokens / s", "short",
         [(f"sum by (model_name) (rate({_vllm('prompt_tokens_total')}{_RATE}))", "prompt {{model_name}}"),
          (f"sum by (model_name) (rate({_vllm('generation_tokens_total')}{_RATE}))", "output {{model_name}}")],
         "Prompt tokens prefilled and output tokens generated per second, summed over replicas."),
        ("Refused requests / s", "reqps",
         [(f"sum by (model, status, reason) (rate({_ours(REFUSED)}_total{_RATE}))", "{{status}} {{reason}} {{model}}")],
         "429: a key's limit (key_limits). 503: shed at a full queue (backpressure, prefill_queue_full) or a replica "
         "that could not serve (engine_dead, engine_unavailable, unavailable). The series appears at the first refusal."),
    ]),
    ("Engine queue and KV pressure", [
        ("Requests waiting / running", "short",
         [(f"sum by (model_name) ({_vllm('num_requests_waiting')})", "waiting {{model_name}}"),
          (f"sum by (model_name) ({_vllm('num_requests_running')})", "running {{model_name}}")],
         "The engines' scheduler queues, summed over replicas; waiting > 0 for long means the replicas are saturated."),
        ("Waiting prompt tokens", "short",
         [(f"sum by (model) ({_WAITING_TOKENS})", "{{model}}")],
         "Prompt tokens waiting for prefill, summed over replicas: the backlog the token-weighted policy and "
         "limits.max_waiting_prompt_tokens act on."),
        ("KV cache usage", "percentunit",
         [(f"max by (model_name) ({_vllm('kv_cache_usage_perc')})", "max {{model_name}}"),
          (f"avg by (model_name) ({_vllm('kv_cache_usage_perc')})", "avg {{model_name}}")],
         "Fraction (0-1) of KV cache blocks in use per replica; scale-down keeps it under "
         "autoscaling.downscale_max_kv_usage."),
    ]),
    ("Replicas and autoscaling", [
        ("Replicas vs autoscaler target", "short",
         [(_by_model(f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{_APP}}})"), "healthy {{model}}"),
          (f"max by (model) ({_TARGET})", "target {{model}}"),
          (f"max by (model) ({_ours(AUTOSCALER_GAUGES['raw_desired'])})", "raw desired {{model}}")],
         "The policy's target and what it wanted before step limits, cooldowns and bounds; the gap to healthy "
         "is replicas starting (placement, nodes, the model's cold start). Scale decisions are annotated."),
        ("Policy: backlog, panic, clamps", "short",
         [(f"max by (model) ({_ours(AUTOSCALER_GAUGES['backlog'])})", "backlog {{model}}"),
          (f"max by (model) ({_ours(AUTOSCALER_GAUGES['panic'])})", "panic {{model}}"),
          (f"max by (model) ({_ours(AUTOSCALER_GAUGES['clamps'])})", "clamps {{model}}")],
         "Backlog the last decision saw (requests or tokens), 1 while in panic / wake-up mode, clamps it applied."),
        ("Policy: decisions and clamps / min", "short",
         [(f"sum by (model, direction) (increase({_DECISIONS}[1m]))", "{{direction}} {{model}}"),
          (f"sum by (model, clamp) (increase({_ours(AUTOSCALER_CLAMPS)}_total[1m]))", "clamp {{clamp}} {{model}}")],
         "Decisions per minute by direction (hold included) and the clamps that shaped them, by rule."),
        ("Serve: queued at handles / ongoing at replicas", "short",
         [(_by_model(f"sum by (deployment) (ray_serve_deployment_queued_queries{{{_APP}}})"), "queued {{model}}"),
          (_by_model(f"sum by (deployment) (ray_serve_num_ongoing_requests_at_replicas{{{_APP}}})"),
           "ongoing {{model}}")],
         "Requests waiting in Serve handles for a replica (router mode) and assigned to replicas."),
    ]),
]

# One annotation per scale-up or scale-down (holds are not events), from the decisions counter.
_DECISION_ANNOTATION = {
    "name": "Scale decisions",
    "datasource": _DS,
    "enable": True,
    "iconColor": "orange",
    "expr": f'sum by (model, direction) (increase({_DECISIONS}{{direction!="hold"}}[1m])) > 0',
    "step": "1m",
    "titleFormat": "scale {{direction}}",
    "textFormat": "{{model}}: {{direction}} decisions in the last minute",
    "tagKeys": "model,direction",
    "useValueForTime": False,
}


def grafana_dashboard() -> dict[str, Any]:
    """Return the dashboard JSON model (Grafana 10+, one Prometheus data source chosen at import)."""
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row_title, row in _ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets, description) in enumerate(row):
            panels.append(_timeseries(pid, title, unit, targets, description, x=(i % 3) * 8, y=y + (i // 3) * 8))
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {
        "title": "fleetserve: serving and autoscaling",
        "uid": "fleetserve-serving",
        "tags": ["fleetserve", "ray-serve", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 2,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": [_DECISION_ANNOTATION]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
            {"name": "application", "label": "Serve application", "type": "query", "datasource": _DS,
             "query": "label_values(ray_serve_deployment_replica_healthy, application)",
             "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]}},
        ]},
        "panels": panels,
    }


def _timeseries(pid: int, title: str, unit: str, targets: list[tuple[str, str]], description: str, *,
                x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
