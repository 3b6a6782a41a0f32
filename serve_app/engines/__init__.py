"""Engines behind a model replica. Only vllm_engine imports vllm; import it lazily."""

from serve_app.engines.base import Engine, EngineStats

__all__ = ["Engine", "EngineStats"]
