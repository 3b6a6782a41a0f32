"""Offline replay: feed a recorded load trace through the same `decide` the Serve adapter calls.

Pure. The trace says how much work was in flight; the replay owns the replica count, so the
policy's decisions take effect: a replica asked for at t serves from t + startup_s, one taken
away stops at once (Serve drains it; its requests count as still running on the others).

Trace format: a JSON list of points, a JSON object with a "points" list, or JSONL, one point a
line, each `TracePoint` below (only t_s is required), sorted by t_s. Between points the last
point holds. With `slots_per_replica` the in-flight work (queued + waiting + running) is spread
over the replicas the replay has ready: each runs up to that many requests and the rest wait, so
a short fleet builds a queue and KV usage is running / slots. Without it the trace's values are
used as recorded (an open-loop replay), except that with no ready replica everything queues.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field, ValidationError

from serve_app.autoscaling.policy import Decision, Observation, PolicyState, decide, due
from serve_app.schema import AutoscalingConfig
from serve_app.engines.base import Load
from serve_app.errors import ConfigError

__all__ = ["TracePoint", "load_trace", "parse_trace", "replay"]


class TracePoint(Load):
    """Load at one instant of a trace, summed over the fleet (the fields of Load, plus its time)."""

    t_s: float = Field(..., description="Seconds since the start of the trace.")


def load_trace(path: str | Path) -> tuple[TracePoint, ...]:
    """Read and validate a trace file (JSON or JSONL). Raises ConfigError naming the bad point and field."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except FileNotFoundError as e:
        raise ConfigError([("", f"trace file {p} does not exist")], source=str(p)) from e
    return parse_trace(text, source=str(p))


def parse_trace(text: str, *, source: str = "trace") -> tuple[TracePoint, ...]:
    """Validate trace text (JSON list, {"points": [...]}, or JSONL) into points sorted by time."""
    stripped = text.strip()
    try:
        data: Any = json.loads(stripped)
    except json.JSONDecodeError:
        try:  # JSONL: one point a line
            data = [json.loads(line) for line in stripped.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ConfigError([("", f"not valid JSON or JSONL: {e}")], source=source) from e
    if isinstance(data, dict):
        data = data.get("points")
    if not isinstance(data, list) or not data:
        raise ConfigError([("", 'expected a non-empty list of points (or {"points": [...]})')], source=source)
    points, problems = [], []
    for i, item in enumerate(data):
        try:
            points.append(TracePoint.model_validate(item))
        except ValidationError as e:
            for err in e.errors(include_url=False):
                loc = ".".join(str(x) for x in err["loc"])
                problems.append((f"points[{i}]" + (f".{loc}" if loc else ""), err["msg"]))
    if problems:
        raise ConfigError(problems, source=source)
    return tuple(sorted(points, key=lambda pt: pt.t_s))


def replay(
    trace: Sequence[TracePoint],
    policy: AutoscalingConfig,
    *,
    startup_s: float = 60.0,
    tick_s: float | None = None,
    slots_per_replica: int | None = None,
    initial_replicas: int | None = None,
) -> list[Decision]:
    """Run `decide` over the trace every `tick_s` (default policy_interval_s) and return every decision.

    startup_s: seconds from asking for a replica to it serving. slots_per_replica: requests one
    replica runs at once (vLLM max_num_seqs); None replays the trace's values as recorded.
    """
    if not trace:
        return []
    if startup_s < 0:
        raise ValueError(f"startup_s ({startup_s}) must be >= 0")
    if slots_per_replica is not None and slots_per_replica < 1:
        raise ValueError(f"slots_per_replica ({slots_per_replica}) must be >= 1")
    step = tick_s if tick_s is not None else (policy.policy_interval_s or 1.0)
    if step <= 0:
        raise ValueError(f"tick_s ({step}) must be > 0")

    ready = initial_replicas if initial_replicas is not None else policy.start_replicas
    pending: list[float] = []  # ready-at times of replicas still starting, oldest first
    target = ready
    state = PolicyState()
    decisions: list[Decision] = []
    start, end = trace[0].t_s, trace[-1].t_s
    ticks = int(math.floor((end - start) / step + 1e-9)) + 1
    i = 0
    for k in range(ticks):
        now = start + k * step
        while i + 1 < len(trace) and trace[i + 1].t_s <= now + 1e-9:
            i += 1
        arrived = [t for t in pending if t <= now + 1e-9]
        ready += len(arrived)
        pending = [t for t in pending if t > now + 1e-9]
        if not due(state, now, policy):
            continue
        obs = _observe(trace[i], now=now, ready=ready, starting=len(pending), target=target,
                       slots=slots_per_replica, policy=policy)
        d = decide(obs, state, policy)
        decisions.append(d)
        state = d.state
        if d.target_replicas > target:
            pending += [now + startup_s] * (d.target_replicas - target)
        elif d.target_replicas < target:
            drop = target - d.target_replicas
            cancel = min(drop, len(pending))  # a starting replica is the cheapest to give up
            pending = pending[: len(pending) - cancel]
            ready -= drop - cancel
        target = d.target_replicas
    return decisions


def _observe(
    pt: TracePoint, *, now: float, ready: int, starting: int, target: int, slots: int | None, policy: AutoscalingConfig
) -> Observation:
    tokens_per_waiting = (
        pt.waiting_tokens / pt.waiting_requests
        if pt.waiting_requests > 0
        else policy.target_waiting_tokens_per_replica / policy.target_queue_per_replica
    )
    common = dict(now_s=now, current_replicas=ready, target_replicas=target, starting_replicas=starting, ttft_s=pt.ttft_s)
    if ready == 0:
        return Observation(**common, queued_requests=pt.in_flight_requests)
    if slots is None:
        return Observation(**{**pt.load().model_dump(), **common})  # the trace's load as recorded
    demand = pt.in_flight_requests
    running = min(demand, ready * slots)
    waiting = demand - running
    return Observation(
        **common, waiting_requests=waiting, running_requests=running,
        waiting_tokens=waiting * tokens_per_waiting, kv_usage=running / (ready * slots),
    )
