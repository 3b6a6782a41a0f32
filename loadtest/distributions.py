"""Token-length distributions for prompts and outputs, sampled from a caller-owned seeded RNG.

Pure: no locust, no clock. Each distribution is a frozen pydantic model (so a load plan
serialises to JSON) with `sample(rng) -> int`, always >= 1. `parse_length` reads the short
CLI form: "128", "fixed:128", "uniform:64-256", "normal:128,32", "lognormal:128,0.5".
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from loadtest.errors import LoadTestError
from serve_app.schema import Frozen

__all__ = [
    "FixedLength", "UniformLength", "NormalLength", "LogNormalLength", "LengthDist", "parse_length",
]


class FixedLength(Frozen):
    """Every request gets the same length."""

    kind: Literal["fixed"] = "fixed"
    tokens: int = Field(128, ge=1, description="The length, in tokens.")

    def sample(self, rng: random.Random) -> int:
        """Return `tokens`."""
        return self.tokens

    @property
    def mean_tokens(self) -> float:
        """Expected length in tokens."""
        return float(self.tokens)


class UniformLength(Frozen):
    """Lengths drawn uniformly from an inclusive integer range."""

    kind: Literal["uniform"] = "uniform"
    min_tokens: int = Field(..., ge=1, description="Shortest length, in tokens (inclusive).")
    max_tokens: int = Field(..., ge=1, description="Longest length, in tokens (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> "UniformLength":
        if self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= min_tokens ({self.min_tokens}); swap them")
        return self

    def sample(self, rng: random.Random) -> int:
        """Return a length in [min_tokens, max_tokens]."""
        return rng.randint(self.min_tokens, self.max_tokens)

    @property
    def mean_tokens(self) -> float:
        """Expected length in tokens."""
        return (self.min_tokens + self.max_tokens) / 2


class NormalLength(Frozen):
    """Normal lengths, rounded and clipped to [min_tokens, max_tokens]."""

    kind: Literal["normal"] = "normal"
    mean_tokens: float = Field(..., gt=0, description="Mean length before clipping, in tokens.")
    std_tokens: float = Field(..., ge=0, description="Standard deviation, in tokens.")
    min_tokens: int = Field(1, ge=1, description="Clip below at this length.")
    max_tokens: int | None = Field(None, ge=1, description="Clip above at this length; mean + 4 std when omitted.")

    def sample(self, rng: random.Random) -> int:
        """Return a clipped, rounded normal draw."""
        hi = self.max_tokens or math.ceil(self.mean_tokens + 4 * self.std_tokens)
        return int(min(max(round(rng.gauss(self.mean_tokens, self.std_tokens)), self.min_tokens), max(hi, self.min_tokens)))


class LogNormalLength(Frozen):
    """Log-normal lengths (long right tail, like chat datasets), clipped to [min_tokens, max_tokens]."""

    kind: Literal["lognormal"] = "lognormal"
    median_tokens: float = Field(..., gt=0, description="Median length, in tokens (exp of the log-mean).")
    sigma: float = Field(..., ge=0, description="Standard deviation of log(length).")
    min_tokens: int = Field(1, ge=1, description="Clip below at this length.")
    max_tokens: int | None = Field(None, ge=1, description="Clip above at this length; median * exp(4 sigma) when omitted.")

    def sample(self, rng: random.Random) -> int:
        """Return a clipped, rounded log-normal draw."""
        hi = self.max_tokens or math.ceil(self.median_tokens * math.exp(4 * self.sigma))
        draw = rng.lognormvariate(math.log(self.median_tokens), self.sigma)
        return int(min(max(round(draw), self.min_tokens), max(hi, self.min_tokens)))

    @property
    def mean_tokens(self) -> float:
        """Expected length in tokens, before clipping."""
        return self.median_tokens * math.exp(self.sigma**2 / 2)


LengthDist = Annotated[
    Union[FixedLength, UniformLength, NormalLength, LogNormalLength], Field(discriminator="kind")
]


def parse_length(spec: str | int, *, field: str = "length") -> FixedLength | UniformLength | NormalLength | LogNormalLength:
    """Parse "128", "fixed:128", "uniform:64-256", "normal:MEAN,STD" or "lognormal:MEDIAN,SIGMA".

    Raises LoadTestError naming `field`, the value and the accepted forms.
    """
    text = str(spec).strip().lower()
    kind, _, args = text.partition(":") if ":" in text else ("fixed", "", text)
    try:
        if kind == "fixed":
            return FixedLength(tokens=int(args))
        if kind == "uniform":
            lo, hi = args.split("-")
            return UniformLength(min_tokens=int(lo), max_tokens=int(hi))
        if kind == "normal":
            mean, std = args.split(",")
            return NormalLength(mean_tokens=float(mean), std_tokens=float(std))
        if kind == "lognormal":
            median, sigma = args.split(",")
            return LogNormalLength(median_tokens=float(median), sigma=float(sigma))
    except (ValueError, TypeError) as e:
        raise LoadTestError(f"{field}={spec!r}: {e}; use 128, uniform:64-256, normal:128,32 or lognormal:128,0.5") from None
    raise LoadTestError(f"{field}={spec!r}: unknown distribution {kind!r}; use fixed, uniform, normal or lognormal")
