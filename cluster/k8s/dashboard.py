"""The Grafana dashboard for serving and autoscaling, as a plain dict (k8s/grafana-dashboard.json).

Metric names as Prometheus sees them: Ray exports Serve's and our own `ray.util.metrics` with a
`ray_` prefix; vLLM's engine metrics appear either as `vllm:*` (vLLM's own Prometheus registry)
or as `ray_vllm_*` (through Ray's metrics agent), so engine panels match both spellings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["grafana_dashboard"]

_DS = {"type": "prometheus", "uid": "${datasource}"}
_APP = 'application=~"$application"'


def _vllm(metric: str) -> str:
    """Selector for one vLLM metric under both exports, e.g. vllm:num_requests_waiting."""
    return f'{{__name__=~"vllm:{metric}|ray_vllm_{metric}"}}'


# (title, unit, [(expr, legend)], description)
_ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("Serve", [
        ("Queued at handles", "short",
         [(f"sum by (deployment) (ray_serve_deployment_queued_queries{{{_APP}}})", "{{deployment}}")],
         "Requests waiting in Serve handles for a replica: the backlog the autoscaler adds to the engines' queues."),
        ("Ongoing at replicas", "short",
         [(f"sum by (deployment) (ray_serve_num_ongoing_requests_at_replicas{{{_APP}}})", "{{deployment}}")],
         "Requests assigned to replicas (running or queued inside the engine)."),
        ("Replicas: target vs healthy", "short",
         [(f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{_APP}}})", "target {{deployment}}"),
          (f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{_APP}}})", "healthy {{deployment}}")],
         "The gap is replicas starting: placement, node provisioning and the model's cold start."),
    ]),
    ("Engine (vLLM)", [
        ("Requests waiting / running", "short",
         [(f"sum by (model_name) ({_vllm('num_requests_waiting')})", "waiting {{model_name}}"),
          (f"sum by (model_name) ({_vllm('num_requests_running')})", "running {{model_name}}")],
         "Engine scheduler queues; waiting > 0 for long means the replicas are saturated."),
        ("KV cache usage", "percentunit",
         [(f"max by (model_name) ({_vllm('kv_cache_usage_perc')})", "max {{model_name}}"),
          (f"avg by (model_name) ({_vllm('kv_cache_usage_perc')})", "avg {{model_name}}")],
         "Fraction (0-1) of KV cache blocks in use; scale-down keeps it under autoscaling.downscale_max_kv_usage."),
        ("Time to first token", "s",
         [(f"histogram_quantile({q}, sum by (le, model_name) (rate({_vllm('time_to_first_token_seconds_bucket')}"
           f"[$__rate_interval])))", f"p{int(q * 100)} {{{{model_name}}}}") for q in (0.5, 0.95, 0.99)],
         "Queueing plus prefill, per model."),
        ("Generated tokens / s", "short",
         [(f"sum by (model_name) (rate({_vllm('generation_tokens_total')}[$__rate_interval]))", "{{model_name}}")],
         "Output throughput per model."),
    ]),
    ("Autoscaling (fleetserve policy and Ray autoscaler)", [
        ("Policy: target vs raw desired replicas", "short",
         [("max by (model) (ray_fleetserve_autoscaler_target_replicas)", "target {{model}}"),
          ("max by (model) (ray_fleetserve_autoscaler_raw_desired_replicas)", "raw desired {{model}}")],
         "Each decision of the queue-depth policy; raw desired is before step limits, cooldowns and bounds."),
        ("Policy: backlog and panic", "short",
         [("max by (model) (ray_fleetserve_autoscaler_backlog)", "backlog {{model}}"),
          ("max by (model) (ray_fleetserve_autoscaler_panic)", "panic {{model}}"),
          ("max by (model) (ray_fleetserve_autoscaler_clamps)", "clamps {{model}}")],
         "Backlog the policy saw (requests or tokens), 1 while in panic / wake-up mode, clamps applied."),
        ("Ray autoscaler: nodes", "short",
         [("sum by (NodeType) (autoscaler_active_nodes)", "active {{NodeType}}"),
          ("sum by (NodeType) (autoscaler_pending_nodes)", "pending {{NodeType}}")],
         "Worker pods (Ray nodes) per group; pending nodes wait for a GPU node (kubernetes.model_cold_start_s)."),
        ("Ray autoscaler: GPUs", "short",
         [('max(autoscaler_cluster_resources{resource="GPU"})', "cluster GPUs"),
          ('max(autoscaler_pending_resources{resource="GPU"})', "pending GPUs")],
         "Logical GPUs in the cluster and GPUs requested by pending placement groups."),
    ]),
]


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
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
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
