"""Engines as values: a name -> engine class registry, and the one spec every engine starts from.

    config models[i].engine ("vllm" | "sim") ──► engine_class(name) ──► cls.start(EngineSpec) ──► Engine

The app builder resolves the class once and hands it to the replica in its ReplicaSpec, so a
benchmark or a test picks an engine (or a variant class of its own) by passing it to
`build_application(config, engines={...})`, never by patching a module. Classes are imported
lazily: only the vLLM engine's module imports vllm.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cluster.planner.layout import Layout
    from serve_app.schema import ModelConfig

__all__ = ["ENGINES", "EngineSpec", "engine_class"]

# name -> "module:Class"; the names are the values of ModelConfig.engine.
ENGINES: dict[str, str] = {
    "vllm": "serve_app.engines.vllm_engine:VLLMEngine",
    "sim": "serve_app.engines.sim_engine:SimEngine",
}


@dataclass(frozen=True)
class EngineSpec:
    """What every engine's `start(spec)` receives: the model's config and its resolved layout."""

    model: "ModelConfig"
    layout: "Layout"
    model_dir: str = ""  # local weights ("" for the simulator, which reads none)
    where: str = "models[?]"  # the model's config path, for error messages
    traces_endpoint: str | None = None  # OTLP endpoint for the engine's own spans (vLLM's tracing); None: off
    metrics_layout: str | None = None  # inside Ray: export the engine's metrics with this `layout` label


def engine_class(name: str) -> Any:
    """Return the engine class registered under `name`. Raises KeyError naming the known engines."""
    try:
        module, _, cls = ENGINES[name].partition(":")
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
    return getattr(importlib.import_module(module), cls)
