"""The one config (re-exported from `serve_app.schema`) and the Serve entry points derived from it.

`serve run serve_app.config:app` serves the config at $FLEETSERVE_CONFIG (else the embedded
default); `serve run serve_app.config:build_app config=deploy.yaml` takes it as a builder arg;
rendered RayServices import `serve_app.config:build_app`. Those paths are what users type, so
they stay here. Importing this package does not import Ray or vLLM: `app` and `build_app` load
lazily. Code inside fleetserve imports config names from `serve_app.schema` instead.
"""

from __future__ import annotations

from typing import Any

from serve_app.schema import *  # noqa: F403 - the public config surface, re-exported
from serve_app.schema import __all__ as _schema_all

__all__ = [*_schema_all, "app", "build_app"]


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
        from serve_app.schema import load_config

        value = build_application(load_config())
        globals()["app"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
