"""Autoscaling section of a model deployment: replica bounds (the policy grows here)."""

from __future__ import annotations

from pydantic import Field, model_validator

from serve_app.config._base import Frozen
from serve_app.errors import FieldError

__all__ = ["AutoscalingConfig"]


class AutoscalingConfig(Frozen):
    """How many replicas a model deployment may run."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale-to-zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas; each holds a whole TP x PP placement group.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at deploy time; defaults to min_replicas (at least 1)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
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
        return self

    @property
    def start_replicas(self) -> int:
        """Replicas to start with: initial_replicas, else min_replicas, but at least one."""
        return self.initial_replicas if self.initial_replicas is not None else max(1, self.min_replicas)

    @property
    def is_fixed(self) -> bool:
        """True when min == max: the deployment runs a fixed number of replicas."""
        return self.min_replicas == self.max_replicas
