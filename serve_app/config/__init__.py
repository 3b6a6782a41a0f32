"""The one config, and the Serve entry points derived from it.

`serve run serve_app.config:app` serves the config at $FLEETSERVE_CONFIG (else the embedded
default); `serve run serve_app.config:build_app config=deploy.yaml` takes it as a builder arg.
Importing this package does not import Ray or vLLM: `app` and `build_app` load lazily.
"""

from __future__ import annotations

from typing import Any

from serve_app.config._autoscaling import AutoscalingConfig
from serve_app.config._kubernetes import KubernetesConfig
from serve_app.config._load import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, load_config, parse_config
from serve_app.config._schema import (
    RESERVED_ENGINE_ARGS,
    AppConfig,
    HttpConfig,
    LocalRayConfig,
    ModelConfig,
    Parallelism,
    Placement,
    TelemetryConfig,
)
from serve_app.config._guard import DEFAULT_PUBLIC_ROUTES, KeyLimits, ModelLimits, RouteConfig
from serve_app.config._sim import SimEngineConfig
from serve_app.config._shape import ModelShape, resolve_local_dir, shape_of_source
from serve_app.config._tiny import TINY_PREFIX, TINY_SPECS, models_home, tiny_model_dir

__all__ = [
    "AppConfig", "AutoscalingConfig", "HttpConfig", "ModelConfig", "Parallelism", "Placement", "TelemetryConfig",
    "ModelShape", "SimEngineConfig", "RESERVED_ENGINE_ARGS", "TINY_PREFIX", "TINY_SPECS", "CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH",
    "load_config", "parse_config", "resolve_local_dir", "shape_of_source", "models_home", "tiny_model_dir",
    "KubernetesConfig", "LocalRayConfig", "KeyLimits", "ModelLimits", "RouteConfig", "DEFAULT_PUBLIC_ROUTES",
    "app", "build_app",
]


def build_app(args: dict[str, Any] | None = None):
    """Serve builder: `serve run serve_app.config:build_app config=deploy.yaml`.

    `config` is a YAML path or, from a Serve config file / RayService, the config mapping itself.
    """
    from serve_app.app import build_app_from_args

    return build_app_from_args(args or {})


def __getattr__(name: str):
    # `app` is built on first access only, so config users never pay for Ray.
    if name == "app":
        from serve_app.app import build_application

        value = build_application(load_config())
        globals()["app"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
