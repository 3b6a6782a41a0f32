"""The Grafana dashboard (k8s/grafana-dashboard.json) queries only metrics the code declares. No Ray.

The live half, every queried metric present in a real scrape, is in tests/test_observability_live.py.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import REPO
from telemetry_helpers.dashboard import dashboard_exprs, label_names, metric_names, queried_metrics
from serve_app.telemetry.metrics import AUTOSCALER_DECISIONS, RAY_PREFIX, scraped_names

BOARD = REPO / "k8s" / "grafana-dashboard.json"


@pytest.mark.parametrize("expr, names", [
    ('histogram_quantile(0.95, sum by (le, model_name) (rate(ray_vllm_ttft_bucket[$__rate_interval])))',
     {"ray_vllm_ttft_bucket"}),
    ('label_replace(sum by (deployment) (up{application=~"$application"}), "model", "$1", "deployment", "model-(.+)")',
     {"up"}),
    ('sum(rate(a_total[5m])) / on (model) group_left (layout) max by (model) (b offset 1h) > 0 and c',
     {"a_total", "b", "c"}),
    ('increase(x_total{direction!="hold", reason="a{b}"}[1m]) > bool 1e3', {"x_total"}),
])
def test_metric_names_of_an_expression(expr, names):
    assert metric_names(expr) == names


def test_label_names_of_an_expression():
    expr = ('label_replace(sum by (le, model_name) (rate(x_bucket{application=~"$app", a!="b"}[1m])), '
            '"model", "$1", "deployment", "model-(.+)")')
    assert label_names(expr) == {"le", "model_name", "application", "a"}


def test_a_name_regex_selector_is_refused():
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"vllm:x|ray_vllm_x"}')


@lru_cache(maxsize=None)
def _source_text(package: str, sub: str) -> str:
    """The text of a package's Python sources under `sub`, found without importing the package."""
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / sub
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("*.py")))


def _declared_by_library(name: str) -> bool:
    """True when vLLM or Ray Serve declares `name` (as scraped: ray_ prefix, _total/_bucket suffixes)."""
    bare = name[len(RAY_PREFIX):]
    for suffix in ("_bucket", "_sum", "_count", "_total"):  # Prometheus adds these to a histogram / counter
        if bare.endswith(suffix):
            bare = bare[: -len(suffix)]
            break
    if bare.startswith("vllm_"):  # vLLM names its metrics vllm:<name>; Ray's agent turns ':' into '_'
        return f'"vllm:{bare[len("vllm_"):]}"' in _source_text("vllm", "v1/metrics")
    if bare.startswith("serve_"):
        return f'"{bare}"' in _source_text("ray", "serve/_private")
    return False


def test_every_dashboard_metric_is_one_the_code_declares():
    queried = queried_metrics(BOARD)
    ours = {n for n in queried if n.startswith(RAY_PREFIX + "fleetserve_")}
    assert ours <= scraped_names(), sorted(ours - scraped_names())
    unknown = sorted(n for n in queried - ours if not _declared_by_library(n))
    assert not unknown, f"queried but declared by neither fleetserve, vLLM nor Ray Serve: {unknown}"
    # The dashboard covers each of the app's own signals the issue lists, not a subset that happens to exist.
    for n in ("ray_vllm_time_to_first_token_seconds_bucket", "ray_vllm_inter_token_latency_seconds_bucket",
              "ray_vllm_e2e_request_latency_seconds_bucket", "ray_vllm_request_queue_time_seconds_bucket",
              "ray_vllm_prompt_tokens_total", "ray_vllm_generation_tokens_total", "ray_vllm_num_requests_waiting",
              "ray_vllm_num_requests_running", "ray_vllm_kv_cache_usage_perc", "ray_fleetserve_engine_waiting_tokens",
              "ray_fleetserve_autoscaler_target_replicas", "ray_fleetserve_requests_refused_total",
              "ray_serve_deployment_replica_healthy"):
        assert n in queried, n


def test_the_library_check_is_not_vacuous():
    assert _declared_by_library("ray_vllm_time_to_first_token_seconds_bucket")
    assert not _declared_by_library("ray_vllm_time_to_first_token_secs_bucket")
    assert not _declared_by_library("ray_serve_no_such_metric")


def test_scale_decisions_are_annotated_from_the_decisions_counter():
    board = json.loads(BOARD.read_text())
    (ann,) = board["annotations"]["list"]
    assert metric_names(ann["expr"]) == {RAY_PREFIX + AUTOSCALER_DECISIONS + "_total"}
    assert 'direction!="hold"' in ann["expr"] and ann["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(metric_names(e) for e in dashboard_exprs(board))
