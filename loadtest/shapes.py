"""Load shapes as pure functions of elapsed time: how many users, spawned how fast.

Locust's own `LoadTestShape.tick()` reads the clock itself, so testing it means sleeping.
Here every shape takes `elapsed_s` as an argument; the locustfile wraps them in one thin
`LoadTestShape` subclass that passes `get_run_time()` in.

Closed-loop shapes (constant, step, spike) set the number of users; each user sends its next
request as soon as the previous one ends (plus the plan's think time), so the request rate
follows the server's latency. Open-loop shapes (poisson, trace) fix *when* requests are sent:
users only carry them, pulling from a pre-drawn arrival schedule (see `loadtest.arrivals`),
so the rate does not depend on response times as long as there are enough users
(users >= rate x end-to-end latency); late sends are reported as the LAG metric.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from serve_app.schema import Frozen

__all__ = [
    "ConstantShape", "StepShape", "SpikeShape", "PoissonShape", "TraceShape", "Shape", "Tick", "plan_tick",
]

Tick = tuple[int, float]
"""(users, spawn_rate): the number of users to run and how many to start or stop per second."""


class ConstantShape(Frozen):
    """A fixed number of closed-loop users."""

    kind: Literal["constant"] = "constant"
    users: int = Field(1, ge=1, description="Concurrent users, each with one request in flight at a time.")
    spawn_rate: float = Field(1.0, gt=0, description="Users started per second while ramping up.")
    open_loop: ClassVar[bool] = False

    def tick(self, elapsed_s: float) -> Tick:
        """Return (users, spawn_rate)."""
        return self.users, self.spawn_rate


class StepShape(Frozen):
    """Closed-loop users: `start_users`, plus `step_users` every `step_s` seconds, up to `max_users`."""

    kind: Literal["step"] = "step"
    start_users: int = Field(1, ge=1, description="Users in the first step.")
    step_users: int = Field(1, ge=1, description="Users added at each step.")
    step_s: float = Field(10.0, gt=0, description="Length of one step, in seconds.")
    max_users: int | None = Field(None, ge=1, description="Users stop growing here; no cap when omitted.")
    spawn_rate: float = Field(10.0, gt=0, description="Users started per second at each step.")
    open_loop: ClassVar[bool] = False

    @model_validator(mode="after")
    def _max_covers_start(self) -> "StepShape":
        if self.max_users is not None and self.max_users < self.start_users:
            raise ValueError(f"max_users ({self.max_users}) must be >= start_users ({self.start_users}); raise max_users")
        return self

    def tick(self, elapsed_s: float) -> Tick:
        """Return the current step's users."""
        steps = math.floor(max(elapsed_s, 0.0) / self.step_s)
        users = self.start_users + self.step_users * steps
        return (users if self.max_users is None else min(self.max_users, users)), self.spawn_rate


class SpikeShape(Frozen):
    """Closed-loop `base_users`, jumping to `spike_users` for `spike_s` seconds from `spike_at_s`."""

    kind: Literal["spike"] = "spike"
    base_users: int = Field(1, ge=1, description="Users before and after the spike.")
    spike_users: int = Field(16, ge=1, description="Users during the spike.")
    spike_at_s: float = Field(10.0, ge=0, description="When the spike starts, in seconds from the start.")
    spike_s: float = Field(10.0, gt=0, description="How long the spike lasts, in seconds.")
    spawn_rate: float = Field(100.0, gt=0, description="Users started/stopped per second: high, so the spike is sharp.")
    open_loop: ClassVar[bool] = False

    def tick(self, elapsed_s: float) -> Tick:
        """Return spike_users inside [spike_at_s, spike_at_s + spike_s), else base_users."""
        inside = self.spike_at_s <= elapsed_s < self.spike_at_s + self.spike_s
        return (self.spike_users if inside else self.base_users), self.spawn_rate


class PoissonShape(Frozen):
    """Open loop: Poisson arrivals at `rate_rps`, carried by up to `users` concurrent users."""

    kind: Literal["poisson"] = "poisson"
    rate_rps: float = Field(..., gt=0, description="Mean arrival rate over all workers, requests per second.")
    users: int = Field(32, ge=1, description="Users carrying arrivals: the most requests in flight; needs >= rate x latency.")
    spawn_rate: float | None = Field(None, gt=0, description="Users started per second; all within 1 s when omitted.")
    open_loop: ClassVar[bool] = True

    def tick(self, elapsed_s: float) -> Tick:
        """Return (users, spawn_rate): all carriers, started at once."""
        return self.users, self.spawn_rate or float(self.users)


class TraceShape(Frozen):
    """Open loop: replay a trace's arrival times and token lengths (see `loadtest.arrivals.load_trace`)."""

    kind: Literal["trace"] = "trace"
    path: str = Field(..., min_length=1, description="JSONL trace: t_s (or start_unix_s), input_tokens, output_tokens, model.")
    time_scale: float = Field(1.0, gt=0, description="Replay speed: 2 sends the trace twice as fast.")
    users: int = Field(32, ge=1, description="Users carrying arrivals: the most requests in flight.")
    spawn_rate: float | None = Field(None, gt=0, description="Users started per second; all within 1 s when omitted.")
    open_loop: ClassVar[bool] = True

    def tick(self, elapsed_s: float) -> Tick:
        """Return (users, spawn_rate): all carriers, started at once."""
        return self.users, self.spawn_rate or float(self.users)


Shape = Annotated[Union[ConstantShape, StepShape, SpikeShape, PoissonShape, TraceShape], Field(discriminator="kind")]


def plan_tick(shape: ConstantShape | StepShape | SpikeShape | PoissonShape | TraceShape, elapsed_s: float, *,
              duration_s: float | None, drain_s: float) -> Tick | None:
    """Return the shape's tick, held at its last value while draining, and None once the run is over.

    Requests are started until `duration_s`; the users stay (idle) `drain_s` more seconds so
    requests in flight finish and every worker's last stats report reaches the master.
    """
    if duration_s is None:
        return shape.tick(elapsed_s)
    if elapsed_s >= duration_s + drain_s:
        return None
    return shape.tick(min(elapsed_s, duration_s))
