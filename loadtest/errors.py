"""The one base exception of loadtest."""

from __future__ import annotations

from serve_app.errors import FleetserveError

__all__ = ["LoadTestError"]


class LoadTestError(FleetserveError):
    """A load plan, trace, dataset or run that cannot be used; the message names the field and the fix."""
