"""Shared test helpers: free ports, paths, and the env every Ray-using test wants."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# Replicas and handles push autoscaling metrics every 10 s by default; tests want it faster.
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


from cluster.ray_env import free_local_port as free_port  # noqa: E402 - tests bind 127.0.0.1 only, as it does


def wait_until(predicate, *, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def shared_dir_or_skip(sub: str) -> Path:
    """Return ../shared/<sub>; skip outside CI when it is absent, fail in CI."""
    p = SHARED / sub
    if not p.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{p} is missing; CI always has ../shared beside the clone")
        pytest.skip(f"{p} not present (only CI and the dev machines have ../shared)")
    return p


@pytest.fixture(scope="session")
def span_exporter():
    """The test process's tracer provider (one per process, like a replica's): the SDK's in-memory exporter.

    Sampling ratio 0: a request is traced only when its traceparent says sampled (flag 01), so a
    test picks sampled and sampled-out requests by the header alone.
    """
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serve_app.schema import TelemetryConfig
    from serve_app.telemetry import TracingSettings, install

    exporter = InMemorySpanExporter()
    settings = TracingSettings.resolve(TelemetryConfig(sampling_ratio=0.0), env={})
    if install(settings, exporter=exporter, simple=True) is None:
        pytest.fail("the in-memory tracer provider was not installed")
    return exporter
