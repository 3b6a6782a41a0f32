"""The Serve adapter against Ray Serve 2.60's own config and policy wrapper (imports Ray; no cluster)."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.autoscaling_state import _resolve_policy_callable  # noqa: E402
from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402
from ray.serve.autoscaling_policy import _apply_autoscaling_config  # noqa: E402
from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig  # noqa: E402
from ray.serve.config import AutoscalingContext  # noqa: E402

from serve_app.autoscaling import serve_adapter as sa  # noqa: E402
from serve_app.config import AutoscalingConfig  # noqa: E402
from serve_app.engines.base import EngineStats  # noqa: E402

POLICY = AutoscalingConfig(min_replicas=0, max_replicas=8, idle_timeout_s=60, upscale_stabilization_s=0,
                           upscale_cooldown_s=0, policy_interval_s=1.0)
DEP = DeploymentID(name="m", app_name="fleetserve")


def serve_config(policy: AutoscalingConfig = POLICY) -> ServeAutoscalingConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # metrics_interval_s is still the push interval
        return ServeAutoscalingConfig(**sa.serve_autoscaling_config(policy, model="m"))


def ctx(*, now: float, running: int, target: int, per_replica: dict[str, float] | None = None, queued: float = 0.0,
        ongoing: float = 0.0, state: dict | None = None, config: ServeAutoscalingConfig | None = None) -> AutoscalingContext:
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=DEP) for i in range(running)]
    metrics = {name: {r: value for r in replicas} for name, value in (per_replica or {}).items()}
    return AutoscalingContext(
        deployment_id=DEP, deployment_name="m", app_name="fleetserve", current_num_replicas=running,
        target_num_replicas=target, running_replicas=replicas, total_num_requests=ongoing + queued,
        total_queued_requests=queued, aggregated_metrics=metrics, raw_metrics={},
        capacity_adjusted_min_replicas=POLICY.min_replicas, capacity_adjusted_max_replicas=POLICY.max_replicas,
        policy_state=state or {}, last_scale_up_time=None, last_scale_down_time=None, current_time=now,
        config=config or serve_config(),
    )


def test_serve_accepts_the_config_and_builds_our_policy_with_its_kwargs():
    cfg = serve_config()
    assert (cfg.min_replicas, cfg.max_replicas, cfg.initial_replicas) == (0, 8, 1)
    assert (cfg.upscale_delay_s, cfg.downscale_delay_s, cfg.downscale_to_zero_delay_s) == (0, 0, 0)
    assert cfg.policy.policy_function == sa.POLICY_IMPORT_PATH
    json.dumps(sa.serve_autoscaling_config(POLICY, model="m"))  # fits a Serve config file / RayService
    policy = _resolve_policy_callable(cfg.policy)  # what Serve's controller does
    assert policy.model == "m" and policy.config == POLICY


def test_fixed_replicas_need_no_policy():
    fixed = AutoscalingConfig(min_replicas=2, max_replicas=2)
    assert sa.deployment_scaling_options(fixed, model="m") == {"num_replicas": 2}
    assert "autoscaling_config" in sa.deployment_scaling_options(POLICY, model="m")


def test_serve_default_policy_maps_the_comparable_knobs_and_serve_accepts_them():
    ours = AutoscalingConfig(policy="serve_default", serve_target_ongoing_requests=8, min_replicas=0, max_replicas=4,
                             idle_timeout_s=20, upscale_stabilization_s=2, downscale_stabilization_s=5,
                             metrics_push_interval_s=0.5, metrics_look_back_s=2)
    opts = sa.deployment_scaling_options(ours, model="m")["autoscaling_config"]
    assert "policy" not in opts  # Serve's default request-based policy
    cfg = serve_config(ours)
    assert (cfg.target_ongoing_requests, cfg.upscale_delay_s, cfg.downscale_delay_s, cfg.downscale_to_zero_delay_s) == (8, 2, 5, 20)
    assert (cfg.min_replicas, cfg.max_replicas, cfg.initial_replicas) == (0, 4, 1)
    assert (cfg.metrics_interval_s, cfg.look_back_period_s) == (0.5, 2)
    assert cfg.policy.policy_function != sa.POLICY_IMPORT_PATH
    assert serve_config(AutoscalingConfig(policy="serve_default", max_replicas=2)).target_ongoing_requests == 2


def test_observation_sums_engine_metrics_over_replicas():
    c = ctx(now=10.0, running=2, target=3, queued=5, per_replica={
        sa.METRIC_WAITING: 4, sa.METRIC_RUNNING: 30, sa.METRIC_WAITING_TOKENS: 1000,
        sa.METRIC_KV_USAGE: 0.8, sa.METRIC_TTFT_S: 0.25})
    obs = sa.observation_from_context(c)
    assert (obs.now_s, obs.current_replicas, obs.target_replicas, obs.starting_replicas) == (10.0, 2, 3, 1)
    assert (obs.queued_requests, obs.waiting_requests, obs.running_requests, obs.waiting_tokens) == (5, 8, 60, 2000)
    assert (obs.kv_usage, obs.ttft_s) == (0.8, 0.25)


def test_without_engine_metrics_serve_counts_stand_in():
    obs = sa.observation_from_context(ctx(now=1.0, running=2, target=2, queued=3, ongoing=12))
    assert (obs.queued_requests, obs.waiting_requests, obs.running_requests, obs.kv_usage) == (3, 0, 12, None)


def test_through_serves_wrapper_decisions_apply_and_state_round_trips():
    cfg = serve_config()
    policy = sa.QueueDepthPolicy(model="m", config=POLICY.model_dump(mode="json"), publish=False)
    wrapped = _apply_autoscaling_config(policy)  # adds Serve's factors, delays and cold-start path
    load = {sa.METRIC_WAITING: 20, sa.METRIC_RUNNING: 32, sa.METRIC_KV_USAGE: 0.9}
    n, state = wrapped(ctx(now=100.0, running=2, target=2, per_replica=load, config=cfg))
    assert n == 3  # (64 running + 40 waiting) / (32 + 4) per replica; panic (5x target) skips the window
    assert sa.STATE_KEY in state and json.dumps(state)
    # 0.4 s later: no decision is due; the target in force is kept and nothing is recorded.
    n2, state2 = wrapped(ctx(now=100.4, running=2, target=n, per_replica=load, state=state, config=cfg))
    assert n2 == n and state2[sa.STATE_KEY] == state[sa.STATE_KEY] and len(policy.audit) == 1
    # 1 s later with the new replicas starting: the same backlog asks for nothing more.
    n3, _ = wrapped(ctx(now=101.0, running=2, target=n, per_replica=load, state=state, config=cfg))
    assert n3 == n and len(policy.audit) == 2
    rec = policy.audit.history()[0]
    assert rec.model == "m" and rec.inputs.waiting_requests == 40 and rec.target_replicas == n


def test_audit_store_keeps_each_models_history_bounded():
    store = sa._AuditStore()
    for i in range(5):
        store.record("m", {"i": i}, 3)
    store.record("other", {"i": 0}, 10)
    assert [r["i"] for r in store.history("m")["decisions"]] == [2, 3, 4]
    assert store.history("m", 1)["decisions"] == [{"i": 4}] and store.history("x") is None
    assert store.models() == ["m", "other"]


def test_engine_stats_reach_the_observation_under_the_contracts_names(caplog):
    # The engine side (as_metrics) and the adapter side must agree on every name: a rename on one
    # side only would leave the policy on Serve's request counts, which this catches.
    stats = EngineStats(waiting_requests=3, running_requests=7, waiting_tokens=300, kv_usage=0.5, ttft_s=0.2)
    obs = sa.observation_from_context(ctx(now=5.0, running=2, target=2, ongoing=999, per_replica=stats.as_metrics()))
    assert (obs.waiting_requests, obs.running_requests, obs.waiting_tokens) == (6, 14, 600)  # summed, not Serve's 999
    assert (obs.kv_usage, obs.ttft_s) == (0.5, 0.2)  # averaged
    assert {sa.METRIC_WAITING, sa.METRIC_RUNNING, sa.METRIC_WAITING_TOKENS, sa.METRIC_KV_USAGE,
            sa.METRIC_TTFT_S} == set(stats.as_metrics())


def test_an_engine_metric_the_adapter_does_not_know_is_reported(caplog):
    with caplog.at_level("WARNING", logger="ray.serve.fleetserve.autoscaler"):
        sa.observation_from_context(ctx(now=1.0, running=1, target=1, per_replica={"engine_waiting_prompt_tokens": 5}))
    assert any("engine_waiting_prompt_tokens" in r.getMessage() for r in caplog.records)
