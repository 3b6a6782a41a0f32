"""Observability of the app: traces (OpenTelemetry), metrics (Ray's export port), the request log.

Pure at import (no Ray, no vLLM): `metrics` imports Ray and vLLM inside its functions, which
only replicas and the router call.
"""

from serve_app.telemetry.requests import LOG_FIELDS, RequestLog, RequestRecord, RequestTelemetry, current_request
from serve_app.telemetry.tracing import PHASES, PhaseSpans, TracingSettings, install, installed

__all__ = ["LOG_FIELDS", "PHASES", "PhaseSpans", "RequestLog", "RequestRecord", "RequestTelemetry", "TracingSettings",
           "current_request", "install", "installed"]
