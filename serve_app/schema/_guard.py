"""Who may call the app and how much: API-key sources, per-key limits, model queue bounds, body size.

Read by the HTTP gate (serve_app/ingress/gate.py) that runs in front of every route, and by
the app builder for the Serve options that bound a model's queue (`max_queued_requests`).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from serve_app.schema._base import Frozen

__all__ = ["KeyLimits", "ModelLimits", "RouteConfig", "DEFAULT_PUBLIC_ROUTES"]

# Liveness only: a load balancer or kubelet probes it without a key. Everything else needs one.
DEFAULT_PUBLIC_ROUTES = ("/health",)


class KeyLimits(Frozen):
    """Limits per API key, enforced by the gate of each ingress replica (the router, or each model replica)."""

    max_concurrent_requests: int | None = Field(
        None, ge=1, description="Requests one key may have in flight at once; past it a 429 with Retry-After. None = no limit.")
    requests_per_s: float | None = Field(
        None, gt=0, description="Sustained request rate one key may send (token bucket); past it a 429 with Retry-After.")
    burst: int | None = Field(
        None, ge=1, description="Requests a key may send at once above `requests_per_s` (bucket size); default 2x the rate, at least 1.")

    @property
    def active(self) -> bool:
        """True when any per-key limit is set."""
        return self.max_concurrent_requests is not None or self.requests_per_s is not None


class ModelLimits(Frozen):
    """Backpressure of one model: bounded queues answered with a fast 503 and Retry-After."""

    max_queued_requests: int | None = Field(
        None, ge=0, description=(
            "Requests that may wait for a replica beyond `max_ongoing_requests` (Serve's own max_queued_requests). "
            "Past it Serve sheds with 503 and Retry-After instead of queueing without bound. None = unbounded."))
    max_waiting_prompt_tokens: int | None = Field(
        None, ge=1, description=(
            "Prompt tokens that may wait for prefill in one replica's engine; past it new requests get a 503 with "
            "Retry-After (the token-weighted queue: one 30k-token prompt costs as much as many short ones)."))
    retry_after_s: float = Field(1.0, ge=0, le=3600, description="Seconds sent in Retry-After when a request is shed.")


class RouteConfig(Frozen):
    """Which HTTP routes exist. An allow-list: the OpenAI surface plus fleetserve's own, nothing else by default."""

    public: tuple[str, ...] = Field(DEFAULT_PUBLIC_ROUTES, description=(
        "Routes answered without an API key (liveness probes). Every other route needs a key when keys are set."))
    vllm: tuple[str, ...] = Field((), description=(
        "vLLM operational or experimental routes to expose as well (e.g. /v1/responses, /invocations, /start_profile, "
        "/load); off by default. They still need a key. Only with direct ingress (one model)."))

    @field_validator("public", "vllm")
    @classmethod
    def _paths(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not p.startswith("/") or any(c in p for c in " ?#"):
                raise ValueError(f"{p!r} is not a route path; write it as /path (no query, no spaces)")
        return v
