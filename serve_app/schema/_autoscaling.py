"""Autoscaling section of a model deployment: replica bounds and the queue-depth policy.

The policy itself lives in `serve_app.autoscaling.policy` (pure); this model only holds its
knobs, so one YAML file tunes it. Every time is in seconds (`_s`), every percent is 0–100.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serve_app.schema._base import Frozen
from serve_app.errors import FieldError

__all__ = ["AutoscalingConfig", "DEFAULT_IDLE_TIMEOUT_S"]

DEFAULT_IDLE_TIMEOUT_S = 600.0


class AutoscalingConfig(Frozen):
    """How many replicas a model deployment may run, and how the queue-depth policy picks the count."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale-to-zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas; each holds a whole TP x PP placement group.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at deploy time; defaults to min_replicas (at least 1)."
    )

    # -- which policy ----------------------------------------------------------------------
    policy: Literal["queue_depth", "serve_default"] = Field(
        "queue_depth",
        description="queue_depth: our policy on the engines' queues (every field below). serve_default: Ray "
        "Serve's own request-based policy on ongoing requests per replica, for comparison (bench/); it uses "
        "serve_target_ongoing_requests, the bounds, upscale/downscale_stabilization_s as Serve's "
        "upscale/downscale_delay_s, idle_timeout_s as its downscale_to_zero_delay_s and the metrics "
        "intervals, and ignores the rest.",
    )
    serve_target_ongoing_requests: float | None = Field(
        None, gt=0,
        description="With policy: serve_default only: Serve's target_ongoing_requests, the requests running "
        "plus queued each replica should carry (Serve's default 2 when omitted). An engine running "
        "max_num_seqs at once is full at max_num_seqs.",
    )

    # -- the signal ------------------------------------------------------------------------
    metric: Literal["requests", "tokens"] = Field(
        "requests",
        description="What the backlog is counted in: waiting requests, or waiting prompt tokens "
        "(better when prompt lengths differ a lot).",
    )
    target_queue_per_replica: float = Field(
        4.0, gt=0,
        description="Backlog (requests waiting in the engine plus queued at Serve handles) each replica "
        "should carry when metric=requests.",
    )
    target_waiting_tokens_per_replica: int = Field(
        8192, gt=0,
        description="Waiting prompt tokens each replica should carry when metric=tokens. A request still "
        "queued at a handle counts as target_waiting_tokens_per_replica / target_queue_per_replica tokens.",
    )
    downscale_max_kv_usage: float = Field(
        0.7, gt=0, le=1,
        description="Drain-safe scale-down: keep enough replicas that the running work would use at most "
        "this fraction (0-1) of their KV cache after the others drain.",
    )

    # -- timing ----------------------------------------------------------------------------
    idle_timeout_s: float | None = Field(
        None, gt=0,
        description="With min_replicas=0 only: seconds with nothing running or waiting before scaling to "
        f"zero; {DEFAULT_IDLE_TIMEOUT_S:g} when omitted.",
    )
    upscale_stabilization_s: float = Field(
        10.0, ge=0,
        description="Scale up only to a count wanted throughout this window (the lowest recent wish); "
        "0 reacts at once. Panic and wake-from-zero skip it.",
    )
    downscale_stabilization_s: float = Field(
        300.0, ge=0,
        description="Scale down only to a count wanted throughout this window (the highest recent wish).",
    )
    upscale_cooldown_s: float = Field(
        15.0, ge=0, description="No further scale-up within this long after a scale-up (panic skips it)."
    )
    downscale_cooldown_s: float = Field(
        60.0, ge=0, description="No scale-down within this long after any scale-up or scale-down."
    )
    policy_interval_s: float = Field(
        1.0, ge=0,
        description="Seconds between decisions; Serve calls the policy every ~0.1 s and the calls in "
        "between keep the current target without a decision.",
    )
    metrics_push_interval_s: float = Field(
        1.0, gt=0,
        description="How often replicas and handles push their load to the Serve controller "
        "(Serve's metrics_interval_s).",
    )
    metrics_look_back_s: float = Field(
        5.0, gt=0,
        description="Serve averages each pushed metric over this window (Serve's look_back_period_s); "
        "must exceed metrics_push_interval_s.",
    )

    # -- step limits and panic --------------------------------------------------------------
    max_step_up: int = Field(4, ge=1, description="Replicas one decision may add (the larger of this and the percent wins).")
    max_step_up_percent: float = Field(
        100.0, ge=0, le=1000, description="Percent of the current target one decision may add."
    )
    max_step_down: int = Field(1, ge=1, description="Replicas one decision may remove (the larger of this and the percent wins).")
    max_step_down_percent: float = Field(
        10.0, ge=0, le=100, description="Percent of the current target one decision may remove."
    )
    panic_threshold: float = Field(
        3.0, ge=1,
        description="Panic when the backlog per replica (starting replicas included) reaches this many "
        "times the target: scale at once, skipping the upscale window and cooldown, still step-capped.",
    )

    # -- audit ------------------------------------------------------------------------------
    history_size: int = Field(
        512, ge=1, le=100_000, description="Decisions kept in memory for `fleetserve autoscaler explain`."
    )

    @model_validator(mode="after")
    def _rules(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise FieldError(
                "max_replicas",
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas}); "
                f"raise max_replicas or lower min_replicas",
            )
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise FieldError(
                "initial_replicas",
                f"initial_replicas ({self.initial_replicas}) must lie in "
                f"[min_replicas={self.min_replicas}, max_replicas={self.max_replicas}]",
            )
        if self.idle_timeout_s is not None and self.min_replicas > 0:
            raise FieldError(
                "idle_timeout_s",
                f"idle_timeout_s ({self.idle_timeout_s}) only applies to scale-to-zero but min_replicas is "
                f"{self.min_replicas}; set min_replicas: 0 or remove idle_timeout_s",
            )
        if self.serve_target_ongoing_requests is not None and self.policy != "serve_default":
            raise FieldError(
                "serve_target_ongoing_requests",
                f"serve_target_ongoing_requests ({self.serve_target_ongoing_requests:g}) only applies to "
                f"policy: serve_default but policy is {self.policy}; set policy: serve_default or remove it",
            )
        if self.metrics_look_back_s <= self.metrics_push_interval_s:
            raise FieldError(
                "metrics_look_back_s",
                f"metrics_look_back_s ({self.metrics_look_back_s}) must be > metrics_push_interval_s "
                f"({self.metrics_push_interval_s}) so each window holds a pushed sample; raise it to at "
                f"least {2 * self.metrics_push_interval_s:g}",
            )
        return self

    @property
    def start_replicas(self) -> int:
        """Replicas to start with: initial_replicas, else min_replicas, but at least one."""
        return self.initial_replicas if self.initial_replicas is not None else max(1, self.min_replicas)

    @property
    def is_fixed(self) -> bool:
        """True when min == max: the deployment runs a fixed number of replicas."""
        return self.min_replicas == self.max_replicas

    @property
    def scale_to_zero_after_s(self) -> float:
        """Idle seconds before scaling to zero (meaningful only with min_replicas=0)."""
        return self.idle_timeout_s if self.idle_timeout_s is not None else DEFAULT_IDLE_TIMEOUT_S

    @property
    def target_backlog_per_replica(self) -> float:
        """Target backlog per replica in the unit of `metric` (requests or tokens)."""
        return float(self.target_waiting_tokens_per_replica if self.metric == "tokens" else self.target_queue_per_replica)
