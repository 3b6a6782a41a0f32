"""Engines behind a model replica. Only vllm_engine imports vllm; import it lazily."""

from serve_app.engines.base import SIGNALS, Engine, EngineStats, Load, metric_name
from serve_app.engines.registry import ENGINES, EngineSpec, engine_class

__all__ = ["Engine", "EngineStats", "Load", "SIGNALS", "metric_name", "ENGINES", "EngineSpec", "engine_class"]
