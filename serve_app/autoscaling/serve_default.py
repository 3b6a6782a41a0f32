"""Ray Serve's default request-based policy, reproduced as a pure function for replays.

A port of Ray 2.60's `python/ray/serve/autoscaling_policy.py`:
`replica_queue_length_autoscaling_policy` -> `_core_replica_queue_length_policy` (desired =
running replicas * total requests / (target_ongoing_requests * running replicas)), wrapped by
`_apply_default_params`: `_apply_scaling_factors` (upscaling/downscaling factor on the delta, the
"stuck by the factor" -1), the cold-start fast path (`_get_cold_start_scale_up_replicas`), and
`_apply_delay_logic` (delays measured in seconds since the first consecutive wish in one
direction; 1 -> 0 uses downscale_to_zero_delay_s; other downscales never go below 1). The
controller then clamps to [min_replicas, max_replicas] and calls the policy every
CONTROL_LOOP_INTERVAL_S (0.1 s). `total_num_requests` is Serve's: requests queued at handles plus
ongoing at replicas, each averaged over look_back_period_s.

Our AutoscalingConfig maps onto it as `serve_app.autoscaling.serve_adapter._serve_default_config`
does: serve_target_ongoing_requests (Serve's default 2), upscale/downscale_stabilization_s as
upscale/downscale_delay_s, idle_timeout_s as downscale_to_zero_delay_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve_app.autoscaling.policy import Observation
from serve_app.schema import AutoscalingConfig

__all__ = ["SERVE_CONTROL_LOOP_S", "SERVE_DEFAULT_TARGET", "ServeDefaultState", "serve_default_decide"]

SERVE_CONTROL_LOOP_S = 0.1  # ray.serve._private.constants.CONTROL_LOOP_INTERVAL_S
SERVE_DEFAULT_TARGET = 2.0  # AutoscalingConfig.target_ongoing_requests default
_EPS = 1e-6  # Serve's _DELAY_ELAPSED_EPS_S


@dataclass(frozen=True)
class ServeDefaultState:
    """Serve's policy_state: the direction counter and when the current wish began."""

    decision_counter: int = 0
    decision_timestamp: float | None = None


def serve_default_decide(obs: Observation, state: ServeDefaultState, cfg: AutoscalingConfig, *,
                         upscaling_factor: float = 1.0, downscaling_factor: float = 1.0) -> tuple[int, ServeDefaultState]:
    """Return Serve's target for `obs` and its new state (bounds applied, as the controller does)."""
    target = cfg.serve_target_ongoing_requests or SERVE_DEFAULT_TARGET
    total = obs.queued_requests + obs.waiting_requests + obs.running_requests
    running, curr_target = obs.current_replicas, obs.target_replicas
    if running == 0:  # cold start fast path (also when nothing asks: keep the target)
        n = max(math.ceil(upscaling_factor), curr_target) if total > 0 else curr_target
        return _bounds(n, cfg), state
    desired = running * (total / (target * running))
    delta = desired - running
    factor = upscaling_factor if delta > 0 else downscaling_factor
    scaled = math.ceil(running + factor * delta)
    if math.ceil(desired) < running and scaled == running:
        scaled -= 1
    n, state = _delay(max(0, scaled), curr_target, cfg, state, obs.now_s)
    return _bounds(n, cfg), state


def _delay(desired: int, curr: int, cfg: AutoscalingConfig, st: ServeDefaultState, now: float) -> tuple[int, ServeDefaultState]:
    counter, since = st.decision_counter, st.decision_timestamp
    decision = curr
    if desired > curr:
        if counter < 0:
            counter, since = 0, None
        counter += 1
        since = now if since is None else since
        if now - since + _EPS >= cfg.upscale_stabilization_s:
            counter, since, decision = 0, None, desired
    elif desired < curr:
        if counter > 0:
            counter, since = 0, None
        counter -= 1
        if curr == 1:
            delay = cfg.scale_to_zero_after_s if cfg.min_replicas == 0 else cfg.downscale_stabilization_s
        else:
            delay = cfg.downscale_stabilization_s
            desired = max(1, desired)
        since = now if since is None else since
        if now - since + _EPS >= delay:
            counter, since, decision = 0, None, desired
    else:
        counter, since = 0, None
    return decision, ServeDefaultState(counter, since)


def _bounds(n: int, cfg: AutoscalingConfig) -> int:
    return min(max(n, cfg.min_replicas), cfg.max_replicas)
