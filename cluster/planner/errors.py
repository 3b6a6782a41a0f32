"""The planner's one exception: a model, accelerator, quantization or layout it cannot plan for."""

from __future__ import annotations

from serve_app.errors import FleetserveError

__all__ = ["PlannerError"]


class PlannerError(FleetserveError):
    """Input the planner cannot use; the message names the input, its value and what to pass instead."""
