"""The queue-depth autoscaling policy: observation + typed state + config -> a decision with its reasons.

Pure: no Ray, no vLLM, no clock. Time arrives as `Observation.now_s`; every window and cooldown is
measured in seconds against it, never in ticks. The Serve adapter and the offline replay call the
same `decide`.

How the count is chosen (backlog and target in the unit of `AutoscalingConfig.metric`: requests,
or prompt tokens; a request whose prompt length is unknown counts as target_tokens/target_requests):

    backlog     = queued at Serve handles + waiting in the engines
    capacity    = running replicas + starting replicas      # cold-start aware: capacity on the way counts
    per_replica = running requests / running replicas while a backlog exists (the engines are full,
                  so this is what one replica absorbs); remembered for when none runs
    queue_need  = ceil((running + backlog) / (per_replica + target))   if backlog > 0, else 0
                  # replicas that each run `per_replica` and hold `target` waiting: a new replica
                  # takes a whole batch off the queue, and the same backlog asks for the same count
    busy_need   = ceil(running replicas * kv_usage / downscale_max_kv_usage), >= 1 while anything
                  runs, <= running replicas                 # drain-safe: the work must still fit
    raw_desired = max(queue_need, busy_need)

then clamps, in this order, each recorded when it changes the count:
    bounds -> up/down stabilization (panic and wake-up skip the up window) -> idle_timeout
    -> cooldowns (panic and wake-up skip the up one) -> starting_replicas (no scale-down while
    capacity is unobserved) -> max_step_up/down -> zero_from_one -> final_bounds.
The up window keeps the lowest wish of the last `upscale_stabilization_s`, the down window the
highest of the last `downscale_stabilization_s` (as Kubernetes' HPA does); both are monotone deques
over counts already bounded to [0, max_replicas], so state stays a few entries long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import Field

from serve_app.schema import AutoscalingConfig
from serve_app.engines.base import Load

__all__ = ["Observation", "WindowSample", "PolicyState", "Clamp", "Mode", "Decision", "decide", "due"]

_EPS = 1e-9  # 2 * 0.35 / 0.7 must not round up to 2 replicas


class Observation(Load):
    """What the policy sees at one instant: the fleet's Load (engine signals, named by the engine
    boundary) plus the replica counts; Serve's context or a replay trace fills it."""

    now_s: float = Field(..., description="Time of the observation in seconds (any fixed origin).")
    current_replicas: int = Field(..., ge=0, description="Replicas running and reporting load.")
    target_replicas: int = Field(..., ge=0, description="Target in force before this decision (running + starting, normally).")
    starting_replicas: int = Field(0, ge=0, description="Replicas asked for but not running yet: capacity on the way.")

    @property
    def capacity_replicas(self) -> int:
        """Replicas running or on the way."""
        return self.current_replicas + self.starting_replicas


class WindowSample(NamedTuple):
    """One wish kept in a stabilization window."""

    at_s: float
    replicas: int


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between decisions. Start from `PolicyState()`."""

    last_decision_s: float | None = None
    last_scale_up_s: float | None = None
    last_scale_down_s: float | None = None
    idle_since_s: float | None = None  # first instant of the current stretch with nothing running or waiting
    running_per_replica: float | None = None  # requests one replica ran the last time a backlog was seen
    up_window: tuple[WindowSample, ...] = ()  # increasing counts: the front is the window's lowest wish
    down_window: tuple[WindowSample, ...] = ()  # decreasing counts: the front is the window's highest wish

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (Serve keeps policy state as a dict)."""
        return {
            "last_decision_s": self.last_decision_s,
            "last_scale_up_s": self.last_scale_up_s,
            "last_scale_down_s": self.last_scale_down_s,
            "idle_since_s": self.idle_since_s,
            "running_per_replica": self.running_per_replica,
            "up_window": [list(s) for s in self.up_window],
            "down_window": [list(s) for s in self.down_window],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PolicyState":
        """Rebuild from `to_dict` output; None or {} gives the initial state."""
        if not d:
            return cls()
        return cls(
            last_decision_s=d.get("last_decision_s"),
            last_scale_up_s=d.get("last_scale_up_s"),
            last_scale_down_s=d.get("last_scale_down_s"),
            idle_since_s=d.get("idle_since_s"),
            running_per_replica=d.get("running_per_replica"),
            up_window=tuple(WindowSample(float(t), int(n)) for t, n in d.get("up_window", ())),
            down_window=tuple(WindowSample(float(t), int(n)) for t, n in d.get("down_window", ())),
        )


@dataclass(frozen=True)
class Clamp:
    """One rule that changed the count: its name, the count before and after, and why."""

    name: str
    before: int
    after: int
    why: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"name": self.name, "before": self.before, "after": self.after, "why": self.why}


Mode = Literal["normal", "panic", "wake"]


@dataclass(frozen=True)
class Decision:
    """The policy's answer: the target, the raw wish it started from and every clamp on the way."""

    observation: Observation
    target_replicas: int
    raw_desired: int
    queue_need: int
    busy_need: int
    running_per_replica: float | None  # requests one full replica runs, as queue_need assumed
    backlog: float  # in the unit of `unit`
    unit: Literal["requests", "tokens"]
    mode: Mode  # panic / wake skip the upscale window and cooldown, never the step limits
    clamps: tuple[Clamp, ...]
    state: PolicyState = field(repr=False)

    @property
    def previous_replicas(self) -> int:
        """The target in force before this decision."""
        return self.observation.target_replicas

    @property
    def direction(self) -> Literal["up", "down", "hold"]:
        """Whether this decision scales up, down or holds."""
        d = self.target_replicas - self.previous_replicas
        return "up" if d > 0 else "down" if d < 0 else "hold"


def due(state: PolicyState, now_s: float, policy: AutoscalingConfig) -> bool:
    """Say whether a decision is due: `policy_interval_s` has passed since the last one."""
    last = state.last_decision_s
    return last is None or now_s < last or now_s - last + _EPS >= policy.policy_interval_s


def decide(obs: Observation, state: PolicyState, policy: AutoscalingConfig) -> Decision:
    """Choose the replica count for `obs`; return it with the raw wish, each clamp and the new state."""
    now, base = obs.now_s, obs.target_replicas
    backlog, per_replica, seen, queue_need, busy_need, mode = _needs(obs, state, policy)
    raw = max(queue_need, busy_need)

    idle = backlog == 0 and obs.running_requests == 0
    idle_since = (state.idle_since_s if state.idle_since_s is not None else now) if idle else None

    clamps: list[Clamp] = []

    def clamp(name: str, value: int, why: str) -> None:
        nonlocal n
        if value != n:
            clamps.append(Clamp(name, n, value, why))
            n = value

    n = raw
    clamp("bounds", min(max(n, policy.min_replicas), policy.max_replicas),
          f"bounds [{policy.min_replicas}, {policy.max_replicas}]")
    wish = n
    up_window = _push(state.up_window, WindowSample(now, wish), now - policy.upscale_stabilization_s, keep_low=True)
    down_window = _push(state.down_window, WindowSample(now, wish), now - policy.downscale_stabilization_s, keep_low=False)

    # 1. Stabilization: move only as far as every wish of the window agrees.
    if n > base and mode == "normal":
        lowest = up_window[0].replicas
        clamp("upscale_stabilization", max(base, lowest),
              f"lowest wish in the last upscale_stabilization_s={policy.upscale_stabilization_s:g} s is {lowest}")
    elif n < base:
        highest = down_window[0].replicas
        clamp("downscale_stabilization", min(base, highest),
              f"highest wish in the last downscale_stabilization_s={policy.downscale_stabilization_s:g} s is {highest}")

    # 2. Scale-to-zero only after a whole idle_timeout_s with nothing running or waiting.
    if n == 0 and base > 0:
        idle_for = now - idle_since if idle_since is not None else 0.0
        if idle_for + _EPS < policy.scale_to_zero_after_s:
            clamp("idle_timeout", 1, f"idle for {idle_for:.1f} s < idle_timeout_s={policy.scale_to_zero_after_s:g}")

    # 3. Cooldowns (panic and wake-up skip the upscale one).
    if n > base and mode == "normal" and _within(now, state.last_scale_up_s, policy.upscale_cooldown_s):
        clamp("upscale_cooldown", base,
              f"last scale-up {now - state.last_scale_up_s:.1f} s ago < upscale_cooldown_s={policy.upscale_cooldown_s:g}")
    last_change = max((t for t in (state.last_scale_up_s, state.last_scale_down_s) if t is not None), default=None)
    if n < base and _within(now, last_change, policy.downscale_cooldown_s):
        clamp("downscale_cooldown", base,
              f"last scaling {now - last_change:.1f} s ago < downscale_cooldown_s={policy.downscale_cooldown_s:g}")

    # 4. Drain-safe: a replica still starting has shown no capacity yet; never shrink around it.
    if n < base and obs.starting_replicas > 0:
        clamp("starting_replicas", base, f"{obs.starting_replicas} replica(s) still starting")

    # 5. Step limits: the larger of the count and the percent of the current target.
    up_limit = max(policy.max_step_up, math.floor(base * policy.max_step_up_percent / 100 + _EPS))
    down_limit = max(policy.max_step_down, math.floor(base * policy.max_step_down_percent / 100 + _EPS))
    if n > base + up_limit:
        clamp("max_step_up", base + up_limit,
              f"+{up_limit} at most (max_step_up={policy.max_step_up}, max_step_up_percent={policy.max_step_up_percent:g})")
    elif n < base - down_limit:
        clamp("max_step_down", base - down_limit,
              f"-{down_limit} at most (max_step_down={policy.max_step_down}, "
              f"max_step_down_percent={policy.max_step_down_percent:g})")

    # 6. Serve scales to zero only from one replica (it lifts 3 -> 0 to 3 -> 1); say so here.
    if n == 0 and base > 1:
        clamp("zero_from_one", 1, "scale to zero only from one replica")

    # 7. The bounds hold whatever came before (e.g. a target left outside them by a config change).
    clamp("final_bounds", min(max(n, policy.min_replicas), policy.max_replicas),
          f"bounds [{policy.min_replicas}, {policy.max_replicas}]")

    new_state = PolicyState(
        last_decision_s=now,
        last_scale_up_s=now if n > base else state.last_scale_up_s,
        last_scale_down_s=now if n < base else state.last_scale_down_s,
        idle_since_s=idle_since,
        running_per_replica=seen,
        up_window=up_window,
        down_window=down_window,
    )
    return Decision(
        observation=obs, target_replicas=n, raw_desired=raw, queue_need=queue_need, busy_need=busy_need,
        running_per_replica=per_replica, backlog=backlog, unit=policy.metric, mode=mode, clamps=tuple(clamps),
        state=new_state,
    )


class _Needs(NamedTuple):
    backlog: float
    per_replica: float | None  # requests one full replica runs, as assumed now
    seen: float | None  # ... as remembered for the next decision
    queue_need: int
    busy_need: int
    mode: Mode


def _needs(obs: Observation, state: PolicyState, policy: AutoscalingConfig) -> _Needs:
    """Compute the backlog, what the queue and the running work each ask for, and the mode."""
    target = policy.target_backlog_per_replica
    backlog = _backlog(obs, policy)
    unit = _units_per_request(policy)
    # A backlog means the engines run full batches: that is what one replica absorbs. With none
    # running (waking from zero) the last full batch seen stands in.
    per_replica = seen = state.running_per_replica
    if backlog > 0 and obs.current_replicas > 0:
        per_replica = obs.running_requests / obs.current_replicas
        seen = per_replica if per_replica > 0 else seen
    absorbed = (per_replica or 0.0) * unit
    # With no replica nothing can be running: a running count then is stale (metrics of replicas
    # just removed). Counted, it sized the wake-up on work that no longer exists and the next
    # decision took the overshoot back (0 -> 2 -> 1 under constant load, found by hypothesis).
    running = obs.running_requests if obs.current_replicas > 0 else 0.0
    queue_need = _ceil((running * unit + backlog) / (absorbed + target)) if backlog > 0 else 0
    busy_need = _busy_need(obs, policy)
    capacity = obs.capacity_replicas
    mode: Mode = "normal"
    if max(queue_need, busy_need) > 0 and capacity == 0:
        mode = "wake"
    elif backlog > 0 and capacity > 0 and backlog >= policy.panic_threshold * target * capacity - _EPS:
        mode = "panic"
    return _Needs(backlog, per_replica, seen, queue_need, busy_need, mode)


def _units_per_request(policy: AutoscalingConfig) -> float:
    """What a request of unknown prompt length counts for in the policy's unit."""
    if policy.metric == "tokens":
        return policy.target_waiting_tokens_per_replica / policy.target_queue_per_replica
    return 1.0


def _backlog(obs: Observation, policy: AutoscalingConfig) -> float:
    """Work waiting for a slot, in the policy's unit."""
    if policy.metric == "tokens":
        # A request still at a handle has no token count yet.
        return obs.waiting_tokens + obs.queued_requests * _units_per_request(policy)
    return obs.queued_requests + obs.waiting_requests


def _busy_need(obs: Observation, policy: AutoscalingConfig) -> int:
    """Replicas the running work needs so that, after a scale-down, KV usage stays under the limit.

    Never more than the replicas running now: it only holds scale-downs back, and replicas still
    starting must not make it grow (the same load would otherwise ask again).
    """
    if obs.running_requests <= 0:
        return 0
    running = obs.current_replicas
    if obs.kv_usage is None:
        return max(1, running)  # no utilization signal: never shrink below what is running
    return max(1, min(running, _ceil(running * obs.kv_usage / policy.downscale_max_kv_usage)))


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def _within(now: float, since: float | None, span_s: float) -> bool:
    return since is not None and span_s > 0 and now - since + _EPS < span_s


def _push(window: tuple[WindowSample, ...], sample: WindowSample, oldest_s: float, *, keep_low: bool) -> tuple[WindowSample, ...]:
    """Add `sample` to a monotone window and drop samples older than `oldest_s`.

    keep_low: the front is the lowest wish (an older wish >= the new one can never be the minimum
    again, so it goes); otherwise the front is the highest.
    """
    kept = [s for s in window if s.at_s >= oldest_s - _EPS]
    while kept and (kept[-1].replicas >= sample.replicas if keep_low else kept[-1].replicas <= sample.replicas):
        kept.pop()
    kept.append(sample)
    return tuple(kept)

