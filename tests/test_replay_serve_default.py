"""Against Ray Serve 2.60 itself (imports Ray; no cluster): the port of its default policy, and shadows through the adapter."""

from __future__ import annotations

import random
import warnings

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentID  # noqa: E402
from ray.serve.autoscaling_policy import _apply_autoscaling_config, replica_queue_length_autoscaling_policy  # noqa: E402
from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig  # noqa: E402
from ray.serve.config import AutoscalingContext  # noqa: E402

from serve_app.autoscaling import serve_adapter as sa  # noqa: E402
from serve_app.autoscaling.policy import Observation  # noqa: E402
from serve_app.autoscaling.serve_default import ServeDefaultState, serve_default_decide  # noqa: E402
from serve_app.config import AutoscalingConfig  # noqa: E402

DEP = DeploymentID(name="m", app_name="fleetserve")


@pytest.mark.parametrize("target", [1.0, 2.0, 5.0])
def test_port_matches_serves_policy_tick_for_tick(target):
    # Zero delays: Serve's delay logic reads time.time(), which a table of ticks cannot drive; the
    # delays themselves are covered by test_replay_requests.test_serve_default_waits_its_delays_in_seconds.
    ours = AutoscalingConfig(policy="serve_default", min_replicas=0, max_replicas=12, serve_target_ongoing_requests=target,
                             upscale_stabilization_s=0, downscale_stabilization_s=0, idle_timeout_s=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        serve_cfg = ServeAutoscalingConfig(**sa._serve_default_config(ours) | {"downscale_to_zero_delay_s": 0.0})
    serve_policy = _apply_autoscaling_config(replica_queue_length_autoscaling_policy)
    rng = random.Random(7)
    serve_state: dict = {}
    state = ServeDefaultState()
    for tick in range(300):
        running = rng.randint(0, 8)
        tgt = max(running, rng.randint(0, 10))
        queued, ongoing = rng.choice([0, 0, rng.random() * 40]), rng.random() * 30 * (running > 0)
        ctx = AutoscalingContext(
            deployment_id=DEP, deployment_name="m", app_name="fleetserve", current_num_replicas=running,
            target_num_replicas=tgt, running_replicas=[], total_num_requests=ongoing + queued,
            total_queued_requests=queued, aggregated_metrics={}, raw_metrics={},
            capacity_adjusted_min_replicas=0, capacity_adjusted_max_replicas=12, policy_state=dict(serve_state),
            last_scale_up_time=None, last_scale_down_time=None, current_time=float(tick), config=serve_cfg)
        n_serve, serve_state = serve_policy(ctx)
        n_serve = min(max(int(n_serve), 0), 12)  # the controller's bounds
        obs = Observation(now_s=float(tick), current_replicas=running, target_replicas=tgt, queued_requests=queued,
                          running_requests=ongoing)
        n_ours, state = serve_default_decide(obs, state, ours)
        assert n_ours == n_serve, (tick, running, tgt, queued, ongoing)


def test_the_live_adapter_records_shadows_and_replay_reruns_them(tmp_path):
    import json as _json

    import yaml
    from typer.testing import CliRunner

    from serve_app.autoscaling.audit import read_records
    from serve_app.autoscaling.cli import cli

    cfg = AutoscalingConfig(min_replicas=1, max_replicas=8, upscale_stabilization_s=0, upscale_cooldown_s=0,
                            shadow_policies={"eager": {"target_queue_per_replica": 1},
                                             "serve": {"policy": "serve_default", "upscale_stabilization_s": 0}})
    policy = sa.QueueDepthPolicy(model="m", config=cfg.model_dump(mode="json"), publish=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        serve_cfg = ServeAutoscalingConfig(**sa.serve_autoscaling_config(cfg, model="m"))
    state: dict = {}
    lines = []
    for t, waiting in ((0.0, 30), (1.0, 30), (2.0, 0)):
        metrics = {"engine_waiting_requests": {"r0": waiting},
                   "engine_running_requests": {"r0": 4}}
        ctx = AutoscalingContext(
            deployment_id=DEP, deployment_name="m", app_name="fleetserve", current_num_replicas=1, target_num_replicas=1,
            running_replicas=[], total_num_requests=34, total_queued_requests=0, aggregated_metrics=metrics, raw_metrics={},
            capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state=state,
            last_scale_up_time=None, last_scale_down_time=None, current_time=t, config=serve_cfg)
        n, state = policy(ctx)
        assert n == policy.audit.history()[-1].target_replicas  # the active policy alone sets the target
    recs = policy.audit.history()
    assert [s.name for s in recs[0].shadows] == ["eager", "serve"] and sa.SHADOW_STATE_KEY in state
    trail = tmp_path / "trail.jsonl"
    trail.write_text("".join(r.to_json() + "\n" for r in recs))
    assert read_records(trail.read_text())[0].shadows == recs[0].shadows  # round trip through JSON
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(yaml.safe_dump({"name": "fs", "models": [{"name": "m", "source": "tiny:dense", "engine": "sim",
                                                                 "autoscaling": cfg.model_dump(mode="json")}]}))
    out = CliRunner().invoke(cli, ["replay", str(trail), "-c", str(deploy)])
    assert out.exit_code == 0, out.output
    for name in ("recorded", "shadow eager (recorded)", "shadow serve (recorded)", "active", "shadow eager"):
        assert f"== {name}:" in out.output
    _json.dumps(state)
