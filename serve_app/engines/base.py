"""The engine boundary: what a model replica needs from an engine, and nothing more.

    start()  ──►  asgi_app  (OpenAI protocol: /v1/chat/completions, /v1/completions, /v1/models, /health)
                  stats()    (queue signals for autoscaling)
                  check_health()
                  shutdown()

Serving the OpenAI protocol is the engine's job (vLLM's own serving layer for the vLLM engine),
so chat templates, validation and error bodies are the engine's, never rewritten here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Engine", "EngineStats"]


@dataclass(frozen=True)
class EngineStats:
    """Scheduler signals of one engine, as last reported by the engine (not averaged)."""

    waiting: int = 0
    running: int = 0
    waiting_prompt_tokens: int = 0
    kv_cache_usage: float = 0.0  # fraction in [0, 1]
    recent_ttft_s: float = 0.0  # mean TTFT of requests that got their first token recently

    def as_metrics(self) -> dict[str, float]:
        """Return the stats under the custom-metric names the autoscaling adapter reads."""
        return {
            "engine_waiting": float(self.waiting),
            "engine_running": float(self.running),
            "engine_waiting_tokens": float(self.waiting_prompt_tokens),
            "engine_kv_usage": float(self.kv_cache_usage),
            "engine_ttft_s": float(self.recent_ttft_s),
        }


class Engine(Protocol):
    """What ModelServer calls. Implementations: VLLMEngine (real) and, for simulation only, SimEngine."""

    asgi_app: Any  # an ASGI app speaking the OpenAI protocol for this model

    def stats(self) -> EngineStats: ...

    def alive(self) -> bool:
        """False once the engine can serve no more requests (the replica then answers retryable 503s)."""
        ...

    async def check_health(self) -> None: ...

    def shutdown(self) -> None: ...
