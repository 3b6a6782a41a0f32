"""The one config: pydantic models (frozen, unknown fields refused) and the loader.

The ground floor of fleetserve: it imports neither Ray, vLLM nor Locust (a test checks that in
a fresh process), and every other package takes its config names from here. The modules behind
it are private (`_schema.py`, ...); import the names below, never the modules.
The Serve entry points built from the config live in `serve_app.config` (`app`, `build_app`).
"""

from __future__ import annotations

from serve_app.schema._accelerators import AcceleratorSpec, Accelerators
from serve_app.schema._autoscaling import DEFAULT_IDLE_TIMEOUT_S, AutoscalingConfig
from serve_app.schema._base import Frozen
from serve_app.schema._guard import DEFAULT_PUBLIC_ROUTES, KeyLimits, ModelLimits, RouteConfig
from serve_app.schema._kubernetes import (
    AcceleratorNodes, ApiKeysSecret, HfTokenSecret, KubernetesConfig, ModelCache, Toleration,
)
from serve_app.schema._load import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, load_config, parse_config
from serve_app.schema._schema import (
    RESERVED_ENGINE_ARGS, AppConfig, HttpConfig, LocalRayConfig, ModelConfig, Parallelism, Placement, TelemetryConfig,
)
from serve_app.schema._shape import ModelShape, is_local_source, resolve_local_dir, shape_of_source
from serve_app.schema._sim import SimEngineConfig
from serve_app.schema._tiny import TINY_PREFIX, TINY_SPECS, models_home, tiny_model_dir

__all__ = [
    "AppConfig", "AutoscalingConfig", "HttpConfig", "ModelConfig", "Parallelism", "Placement", "TelemetryConfig",
    "LocalRayConfig", "KubernetesConfig", "KeyLimits", "ModelLimits", "RouteConfig", "DEFAULT_PUBLIC_ROUTES",
    "SimEngineConfig", "AcceleratorSpec", "Accelerators", "ModelShape", "Frozen",
    "AcceleratorNodes", "ApiKeysSecret", "HfTokenSecret", "ModelCache", "Toleration",
    "RESERVED_ENGINE_ARGS", "DEFAULT_IDLE_TIMEOUT_S", "TINY_PREFIX", "TINY_SPECS", "CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH",
    "load_config", "parse_config", "resolve_local_dir", "shape_of_source", "is_local_source", "models_home",
    "tiny_model_dir",
]
