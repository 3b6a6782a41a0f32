"""The autoscaling section of the one config: defaults, and errors that name field, value and fix."""

from __future__ import annotations

import pytest
import yaml

from serve_app.config import AutoscalingConfig, load_config, parse_config
from serve_app.errors import ConfigError


def _app(autoscaling: dict) -> dict:
    return {"models": [{"name": "m", "source": "org/model", "autoscaling": autoscaling}]}


def _problems(autoscaling: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        parse_config(_app(autoscaling))
    return e.value.problems


def test_defaults_are_valid_and_sensible_for_llm_serving():
    a = AutoscalingConfig()
    assert (a.min_replicas, a.max_replicas, a.start_replicas, a.is_fixed) == (1, 1, 1, True)
    assert a.metric == "requests" and a.target_backlog_per_replica == a.target_queue_per_replica
    assert a.downscale_stabilization_s > a.upscale_stabilization_s  # slow to give up GPUs, quick to add
    assert a.metrics_look_back_s > a.metrics_push_interval_s
    load_config()  # the embedded default still validates


def test_yaml_section_parses_into_the_policy():
    text = """
models:
  - name: m
    source: org/model
    autoscaling:
      min_replicas: 0
      max_replicas: 8
      metric: tokens
      target_waiting_tokens_per_replica: 4096
      idle_timeout_s: 120
      upscale_stabilization_s: 0
      max_step_up_percent: 50
      panic_threshold: 4
"""
    a = parse_config(yaml.safe_load(text)).model("m").autoscaling
    assert a.metric == "tokens" and a.target_backlog_per_replica == 4096
    assert (a.min_replicas, a.start_replicas, a.idle_timeout_s, a.panic_threshold) == (0, 1, 120, 4)


@pytest.mark.parametrize("section, path, words", [
    ({"min_replicas": 4, "max_replicas": 2}, "models[0].autoscaling.max_replicas", ["(2)", "min_replicas (4)", "raise"]),
    ({"min_replicas": 1, "max_replicas": 4, "initial_replicas": 9}, "models[0].autoscaling.initial_replicas", ["9", "[min_replicas=1"]),
    ({"min_replicas": 1, "idle_timeout_s": 30}, "models[0].autoscaling.idle_timeout_s", ["(30.0)", "min_replicas is 1", "set min_replicas: 0"]),
    ({"metrics_push_interval_s": 5, "metrics_look_back_s": 5}, "models[0].autoscaling.metrics_look_back_s", ["(5.0)", "metrics_push_interval_s (5.0)", "at least 10"]),
    ({"target_queue_per_replica": 0}, "models[0].autoscaling.target_queue_per_replica", ["0", "greater than 0"]),
    ({"metric": "gpus"}, "models[0].autoscaling.metric", ["'requests' or 'tokens'"]),
    ({"max_step_down_percent": 150}, "models[0].autoscaling.max_step_down_percent", ["150", "less than or equal to 100"]),
    ({"panic_threshold": 0.5}, "models[0].autoscaling.panic_threshold", ["0.5", "greater than or equal to 1"]),
    ({"downscale_max_kv_usage": 1.5}, "models[0].autoscaling.downscale_max_kv_usage", ["1.5"]),
    ({"upscale_cooldown_s": -1}, "models[0].autoscaling.upscale_cooldown_s", ["-1"]),
    ({"history_size": 0}, "models[0].autoscaling.history_size", ["0"]),
    ({"target_queue": 4}, "models[0].autoscaling.target_queue", ["Extra inputs are not permitted"]),
    ({"serve_target_ongoing_requests": 8}, "models[0].autoscaling.serve_target_ongoing_requests",
     ["(8)", "policy is queue_depth", "set policy: serve_default"]),
    ({"policy": "serve_default", "serve_target_ongoing_requests": 0},
     "models[0].autoscaling.serve_target_ongoing_requests", ["greater than 0"]),
    ({"policy": "hpa"}, "models[0].autoscaling.policy", ["'queue_depth' or 'serve_default'"]),
])
def test_bad_values_name_the_field(section, path, words):
    problems = _problems(section)
    assert [p for p, _ in problems] == [path], problems
    message = problems[0][1]
    for w in words:
        assert w in message, message


def test_idle_timeout_is_accepted_with_scale_to_zero():
    a = parse_config(_app({"min_replicas": 0, "max_replicas": 2, "idle_timeout_s": 30})).model("m").autoscaling
    assert a.idle_timeout_s == 30 and a.start_replicas == 1


def test_the_config_is_frozen():
    a = AutoscalingConfig()
    with pytest.raises(Exception):
        a.max_replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize("section", [
    {},
    {"min_replicas": 2, "max_replicas": 6},
    {"min_replicas": 0, "max_replicas": 4},
    {"min_replicas": 0, "max_replicas": 4, "idle_timeout_s": 30, "metric": "tokens"},
])
def test_dump_and_validate_round_trip(section):
    """Serve rebuilds the policy in its controller from model_dump(mode="json"): that must validate."""
    a = AutoscalingConfig(**section)
    assert AutoscalingConfig.model_validate(a.model_dump(mode="json")) == a


def test_scale_to_zero_delay_defaults_when_omitted():
    assert AutoscalingConfig(min_replicas=0, max_replicas=2).scale_to_zero_after_s == 600
    assert AutoscalingConfig(min_replicas=0, max_replicas=2, idle_timeout_s=45).scale_to_zero_after_s == 45
