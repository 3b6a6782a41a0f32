"""The replay's inputs and output: the policy it calls, the deployment around it, what it measured.

Pure; `serve_app.autoscaling.des` re-exports these names (import them from there). Kept apart so
the event loop stays one screenful of concerns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from serve_app.autoscaling.latency import LatencyModel
from serve_app.autoscaling.policy import Observation
from serve_app.schema import AutoscalingConfig

__all__ = ["ReplayPolicy", "ReplaySetup", "ReplayResult"]


class ReplayPolicy(Protocol):
    """What the replay calls: a name, the autoscaling config (bounds, metric windows) and a tick."""

    name: str
    config: AutoscalingConfig
    tick_s: float

    def __call__(self, obs: Observation) -> int: ...


@dataclass(frozen=True)
class ReplaySetup:
    """The deployment around the policy: replica timing, Serve's limits, cold starts, seed."""

    latency: LatencyModel
    max_ongoing_requests: int = 256
    max_queued_requests: int | None = None
    request_timeout_s: float | None = None
    graceful_shutdown_timeout_s: float = 30.0
    cold_start_samples_s: tuple[float, ...] = ()  # measured start-ups to draw from; () = latency.cold_start_s
    seed: int = 0
    tail_s: float = 60.0  # replica-seconds are counted to the last arrival + tail_s (or the last finish)
    # The HTTP path (proxy, ingress, the replica's own hop) that the replay does not simulate, there and
    # back, charged on the way in: a request reaches the handle ingress_s after its send time, and its
    # TTFT and E2E count from the send. fidelity.unloaded_overhead_s measures it from a live run.
    ingress_s: float = 0.0


@dataclass
class ReplayResult:
    """Per-request latencies (seconds, NaN where a request got none), counts and the timeline."""

    policy: str
    latency: str
    requests: int
    finished: int
    shed: int
    timed_out: int
    killed: int  # still in a draining replica at its graceful shutdown deadline
    unfinished: int
    ttft_s: list[float]
    tpot_s: list[float]
    e2e_s: list[float]
    arrival_s: Sequence[float]
    replica_s: float
    gpu_hours: float
    scale_events: int
    flaps: int  # scale direction reversals
    peak_queue: float  # handle queue + engine waiting, at a metrics sample
    horizon_s: float
    # (t, handle queue, engine waiting, engine running, replicas running, starting, target)
    timeline: list[tuple[float, int, int, int, int, int, int]] = field(default_factory=list)
