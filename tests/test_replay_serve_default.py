"""The replay's port of Serve's default policy decides as Ray Serve 2.60's own code does (imports Ray; no cluster)."""

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
