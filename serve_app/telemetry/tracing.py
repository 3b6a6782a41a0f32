"""OpenTelemetry tracing of one process (router or model replica): settings, provider, engine phases.

    telemetry block + OTEL_* env ──► TracingSettings.resolve ──► install(settings) ──► global TracerProvider
        (one per process; vLLM's engine spans and ours both go through it)

    span tree of one request (RequestTelemetry makes the SERVER spans, vLLM makes `llm_request`):
        router  POST /v1/chat/completions          (router mode only)
          └─ replica  POST /v1/chat/completions    (gen_ai.* request/usage attributes)
               └─ llm_request                      (vLLM's own span: gen_ai.latency.* from its engine stats)
                    ├─ queued   (in the engine's scheduler queue)
                    ├─ prefill  (scheduled until the first token)
                    └─ decode   (first token until the last)

vLLM reports the phases as durations on `llm_request`; `PhaseSpans` turns them into child spans
when that span ends, so the timings are vLLM's and never measured twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from serve_app.schema import TelemetryConfig

__all__ = ["TracingSettings", "install", "installed", "PhaseSpans", "SAMPLER_ENV", "PHASES"]

log = logging.getLogger("ray.serve")

SAMPLER_ENV = "OTEL_TRACES_SAMPLER"
# Written out so the order is visible: the first set source wins (the standard variables are how an
# operator overrides a shipped config per pod without editing it).
_ENDPOINT_SOURCES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint")
_PROTOCOL_SOURCES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL", "telemetry.otlp_protocol")
_SERVICE_SOURCES = ("OTEL_SERVICE_NAME", "telemetry.service_name")

# vLLM's attribute -> the phase it measures (vllm.tracing.SpanAttributes names).
PHASES = (("queued", "gen_ai.latency.time_in_queue"), ("prefill", "gen_ai.latency.time_in_model_prefill"),
          ("decode", "gen_ai.latency.time_in_model_decode"))
_TTFT = "gen_ai.latency.time_to_first_token"


def _first(sources: tuple[str, ...], env: Mapping[str, str], config: dict[str, Any]) -> tuple[Any, str]:
    for name in sources:
        value = config.get(name.removeprefix("telemetry.")) if name.startswith("telemetry.") else env.get(name)
        if value not in (None, ""):
            return value, name
    return None, ""


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go and which requests are traced, resolved once (plain data: it is pickled to replicas)."""

    endpoint: str | None  # None: tracing off
    protocol: str
    service_name: str
    sampling_ratio: float
    sampler_from_env: bool  # OTEL_TRACES_SAMPLER set: the SDK builds the sampler from it
    endpoint_source: str = ""

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    @classmethod
    def resolve(cls, config: TelemetryConfig, env: Mapping[str, str] | None = None) -> "TracingSettings":
        """Apply the precedence in the module constants (env first, then the config block)."""
        env = os.environ if env is None else env
        cfg = config.model_dump()
        endpoint, source = _first(_ENDPOINT_SOURCES, env, cfg)
        if source == "OTEL_EXPORTER_OTLP_ENDPOINT" and (_first(_PROTOCOL_SOURCES, env, cfg)[0] == "http/protobuf"):
            # The generic variable names the collector, not the signal's path (OTel spec).
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        protocol, _ = _first(_PROTOCOL_SOURCES, env, cfg)
        if protocol not in ("grpc", "http/protobuf"):
            from serve_app.errors import ConfigError

            raise ConfigError([("telemetry.otlp_protocol", f"OTLP protocol {protocol!r} (from the environment) is not "
                                "grpc or http/protobuf; set OTEL_EXPORTER_OTLP_TRACES_PROTOCOL to one of them")])
        service, _ = _first(_SERVICE_SOURCES, env, cfg)
        return cls(endpoint=endpoint, protocol=protocol, service_name=service, sampling_ratio=config.sampling_ratio,
                   sampler_from_env=bool(env.get(SAMPLER_ENV)), endpoint_source=source)


def _sampler(settings: TracingSettings):
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if settings.sampler_from_env:
        return None  # TracerProvider(sampler=None) reads OTEL_TRACES_SAMPLER / _ARG itself
    ratio = TraceIdRatioBased(settings.sampling_ratio)
    # A client that sampled is traced (W3C); one that did not is sampled like a request without a parent.
    return ParentBased(root=ratio, remote_parent_not_sampled=ratio)


def _exporter(settings: TracingSettings):
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=settings.endpoint)


_provider: Any = None


def installed() -> bool:
    """True once this process has a fleetserve tracer provider."""
    return _provider is not None


def install(settings: TracingSettings, *, resource: Mapping[str, str] | None = None, exporter: Any = None,
            simple: bool = False) -> Any:
    """Install the process's tracer provider (once; later calls return the first). None when tracing is off.

    `exporter` replaces the OTLP exporter (tests pass the SDK's InMemorySpanExporter); `simple`
    exports each span as it ends instead of in batches (tests read them right after a request).
    """
    global _provider
    if _provider is not None:
        return _provider
    if not settings.enabled and exporter is None:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attrs = {"service.name": settings.service_name, **(resource or {})}
    if os.environ.get("OTEL_SERVICE_NAME"):
        attrs.pop("service.name")  # Resource.create takes it from the environment
    provider = TracerProvider(resource=Resource.create(attrs), sampler=_sampler(settings))
    provider.add_span_processor(PhaseSpans(provider))
    exp = exporter if exporter is not None else _exporter(settings)
    provider.add_span_processor(SimpleSpanProcessor(exp) if simple else BatchSpanProcessor(exp))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("fleetserve: tracing to %s (%s, from %s), sampling %s", settings.endpoint or type(exp).__name__,
             settings.protocol, settings.endpoint_source or "a test exporter",
             os.environ.get(SAMPLER_ENV) if settings.sampler_from_env else f"ratio {settings.sampling_ratio}")
    return provider


def _span_processor_base():
    try:
        from opentelemetry.sdk.trace import SpanProcessor
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return object
    return SpanProcessor


class PhaseSpans(_span_processor_base()):
    """Span processor: when vLLM's `llm_request` span ends, add its queued/prefill/decode children.

    vLLM records the phases as durations measured by its engine; laid out back from the first
    token (arrival + TTFT): queued ends where prefill starts, prefill ends at the first token,
    decode follows it. What precedes `queued` is the serving layer (parsing, tokenization).
    """

    def __init__(self, provider: Any):
        self._provider = provider

    def on_end(self, span: Any) -> None:
        if span.name != "llm_request" or not span.context.trace_flags.sampled:
            return
        from opentelemetry import trace

        a = span.attributes or {}
        try:
            first_token = span.start_time + int(float(a[_TTFT]) * 1e9)
            queued, prefill, decode = (int(float(a[k]) * 1e9) for _, k in PHASES)
        except (KeyError, TypeError, ValueError):
            return  # an older/newer vLLM without these attributes: keep its span, add nothing
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(span.context))
        tracer = self._provider.get_tracer("fleetserve.engine")
        bounds = {"queued": (first_token - prefill - queued, first_token - prefill),
                  "prefill": (first_token - prefill, first_token), "decode": (first_token, first_token + decode)}
        for name, _ in PHASES:
            start, end = bounds[name]
            child = tracer.start_span(name, context=ctx, start_time=max(start, span.start_time))
            child.end(end_time=max(end, start))
