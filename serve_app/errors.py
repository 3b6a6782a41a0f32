"""The one base exception of serve_app, and the config error that names field, value and fix."""

from __future__ import annotations

__all__ = ["FleetserveError", "ConfigError", "FieldError", "PlacementError", "EngineError"]


class FleetserveError(Exception):
    """Base of every error fleetserve raises on purpose."""


class FieldError(ValueError):
    """A config rule broken at `path` (relative to the model that raised it).

    Raised inside pydantic validators so the loader can report the full field path,
    e.g. ``models[0].parallelism.tensor``, instead of the validator's own location.
    """

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


class ConfigError(FleetserveError):
    """Config that cannot be loaded; `problems` is a list of (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "config"):
        self.problems = problems
        self.source = source
        lines = [f"invalid {source}:"] + [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class PlacementError(FleetserveError):
    """A replica's placement group cannot be scheduled on the cluster."""


class EngineError(FleetserveError):
    """The engine could not be built or started."""
