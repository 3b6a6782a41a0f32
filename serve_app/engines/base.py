"""The engine boundary: what a model replica needs from an engine, and nothing more.

    start()  ──►  asgi_app  (OpenAI protocol: /v1/chat/completions, /v1/completions, /v1/models, /health)
                  stats()    (queue signals for autoscaling)
                  check_health()
                  shutdown()

Serving the OpenAI protocol is the engine's job (vLLM's own serving layer for the vLLM engine),
so chat templates, validation and error bodies are the engine's, never rewritten here.

The signal contract. The engine owns the names and units of the load it reports; everything
downstream imports them from here instead of spelling them again:

    EngineStats (one engine) ──as_metrics()──► Serve custom metrics `engine_<signal>`
        ──► serve_adapter.observation_from_context ──► Observation(Load) ──► decide()
    replay trace ──► TracePoint(Load) ──► Observation(Load) ──► decide()

`Load` is the fleet-wide view (summed counts, mean usage) shared by the policy's Observation and
the replay's TracePoint; it adds the one signal no engine sees: requests queued at Serve handles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Engine", "EngineStats", "Load",
    "WAITING_REQUESTS", "RUNNING_REQUESTS", "WAITING_TOKENS", "KV_USAGE", "TTFT_S",
    "SIGNALS", "METRIC_PREFIX", "metric_name", "signal_of_metric", "TTFT_EWMA", "recent_ttft",
]

# The signals, in the units their names say. Each is a field of EngineStats and of Load.
WAITING_REQUESTS = "waiting_requests"  # requests waiting in the engine's scheduler
RUNNING_REQUESTS = "running_requests"  # requests the engine is running
WAITING_TOKENS = "waiting_tokens"  # prompt tokens of the waiting requests
KV_USAGE = "kv_usage"  # KV-cache usage, fraction in [0, 1]
TTFT_S = "ttft_s"  # recent time to first token, seconds
SIGNALS = (WAITING_REQUESTS, RUNNING_REQUESTS, WAITING_TOKENS, KV_USAGE, TTFT_S)

TTFT_EWMA = 0.2  # weight of the newest sample in every engine's recent-TTFT average (the ttft_s signal)


def recent_ttft(previous_s: float, sample_s: float) -> float:
    """Fold one TTFT sample into the recent average (the first sample stands alone)."""
    return sample_s if previous_s == 0.0 else (1 - TTFT_EWMA) * previous_s + TTFT_EWMA * sample_s


METRIC_PREFIX = "engine_"  # Serve custom metrics are `engine_<signal>`: ours, not Serve's own names


def metric_name(signal: str) -> str:
    """Return the Serve custom-metric name of `signal` (one of SIGNALS). Raises KeyError otherwise."""
    if signal not in SIGNALS:
        raise KeyError(f"{signal!r} is not an engine signal; known: {', '.join(SIGNALS)}")
    return METRIC_PREFIX + signal


def signal_of_metric(name: str) -> str | None:
    """Return the signal a custom-metric name carries, or None when it is not one of ours."""
    signal = name[len(METRIC_PREFIX):] if name.startswith(METRIC_PREFIX) else None
    return signal if signal in SIGNALS else None


@dataclass(frozen=True)
class EngineStats:
    """Scheduler signals of one engine, as last reported by the engine (not averaged)."""

    waiting_requests: int = 0
    running_requests: int = 0
    waiting_tokens: int = 0
    kv_usage: float = 0.0  # fraction in [0, 1]
    ttft_s: float = 0.0  # mean TTFT of requests that got their first token recently

    def as_metrics(self) -> dict[str, float]:
        """Return the stats under their custom-metric names (`engine_<signal>`), as Serve wants them."""
        return {metric_name(s): float(getattr(self, s)) for s in SIGNALS}


# The contract holds by construction: a renamed field fails at import, not in the controller.
if tuple(f.name for f in dataclasses.fields(EngineStats)) != SIGNALS:  # pragma: no cover - guards edits
    raise ImportError(f"EngineStats fields must be SIGNALS {SIGNALS}")


class Load(BaseModel):
    """Load of a whole fleet at one instant: the engine signals summed (counts) or averaged (usage, TTFT).

    Shared by the policy's Observation and the replay's TracePoint; neither re-declares these fields.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    queued_requests: float = Field(0.0, ge=0, description="Requests queued at Serve handles, not yet inside an engine.")
    waiting_requests: float = Field(0.0, ge=0, description="Requests waiting in the engines' schedulers, summed over replicas.")
    running_requests: float = Field(0.0, ge=0, description="Requests the engines are running, summed over replicas.")
    waiting_tokens: float = Field(0.0, ge=0, description="Prompt tokens of the waiting requests, summed over replicas.")
    kv_usage: float | None = Field(None, ge=0, le=1, description="Mean KV-cache usage of running replicas (0-1); None if unknown.")
    ttft_s: float | None = Field(None, ge=0, description="Recent time to first token in seconds; informational only.")

    @property
    def in_flight_requests(self) -> float:
        """All requests in the system at this instant."""
        return self.queued_requests + self.waiting_requests + self.running_requests

    def load(self) -> "Load":
        """Return only the Load fields (drop what a subclass adds)."""
        return Load(**{k: getattr(self, k) for k in Load.model_fields})


if not set(SIGNALS) <= set(Load.model_fields):  # pragma: no cover - guards edits
    raise ImportError(f"Load must carry every signal of {SIGNALS}")


class Engine(Protocol):
    """What ModelServer calls. Implementations: VLLMEngine (real) and, for simulation only, SimEngine.

    Every engine is started the same way: `await cls.start(spec)` with a registry.EngineSpec.
    """

    asgi_app: Any  # an ASGI app speaking the OpenAI protocol for this model

    @classmethod
    async def start(cls, spec: Any) -> "Engine": ...

    def stats(self) -> EngineStats: ...

    def alive(self) -> bool:
        """False once the engine can serve no more requests (the replica then answers retryable 503s)."""
        ...

    async def check_health(self) -> None: ...

    def shutdown(self) -> None: ...
