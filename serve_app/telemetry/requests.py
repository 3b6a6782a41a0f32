"""RequestTelemetry: the ASGI middleware that gives each request its span and its request-log line.

    client ──traceparent──► RequestTelemetry ──► Gate ──► router app | EngineGuard ──► vLLM's OpenAI app
                              │ SERVER span (child of the client's traceparent)      │
                              │ scope headers carry OUR span's traceparent onward ───┘ (router ──► replica,
                              │                                                         replica ──► vLLM)
                              └─ RequestRecord (a context variable) ◄── engine: tokens, TTFT, finish reason
                                   └─► span attributes + one JSON line per finished request (replica only)

Pure ASGI over the OpenTelemetry API: no Ray, no vLLM. Without a tracer provider the spans are
the API's no-op ones; the request log and the client's trace id still work.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["RequestTelemetry", "RequestRecord", "RequestLog", "current_request", "serving", "OPERATIONS", "LOG_FIELDS"]

log = logging.getLogger("ray.serve")

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = (b"traceparent", b"tracestate")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
# OpenAI route -> gen_ai.operation.name (GenAI semantic conventions' well-known values).
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}
_UNTRACED_PREFIXES = ("/-/", "/health")  # probes: a span per health check would drown the requests

_current: contextvars.ContextVar["RequestRecord | None"] = contextvars.ContextVar("fleetserve_request", default=None)

# The request log's fields, in order. `timestamp_s`/`prompt_tokens`/`output_tokens`/`model` are
# what the replay's `jsonl` trace format reads (serve_app/autoscaling/traces.py).
LOG_FIELDS = ("timestamp_s", "model", "route", "status", "prompt_tokens", "output_tokens", "ttft_s", "e2e_s",
              "finish_reason", "replica", "layout", "trace_id")


def current_request() -> "RequestRecord | None":
    """The record of the request this task serves, for the engine to fill (None outside a request)."""
    return _current.get()


@contextlib.contextmanager
def serving(record: Any) -> Iterator[None]:
    """Make `record` (anything with RequestRecord.engine_output) the current request's for the engine adapter.

    RequestTelemetry does this for every request of a replica; another front-end process does it
    with a record that hands the numbers back to front end 0 (serve_app/engines/_front_end_proc.py).
    """
    token = _current.set(record)
    try:
        yield
    finally:
        _current.reset(token)


@dataclass
class RequestRecord:
    """What one request did; filled by the middleware (HTTP) and the engine (tokens, TTFT)."""

    arrival_s: float  # epoch seconds
    route: str
    model: str | None = None
    status: int | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ttft_s: float | None = None  # the engine's own: arrival at the engine to the first token
    finish_reason: str | None = None
    trace_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def engine_output(self, *, prompt_tokens: int | None, output_tokens: int | None, ttft_s: float | None,
                      finish_reason: str | None) -> None:
        """Record the engine's view of the request (called by the engine adapter on its final output)."""
        self.prompt_tokens, self.output_tokens = prompt_tokens, output_tokens
        self.ttft_s, self.finish_reason = ttft_s, finish_reason


class RequestLog:
    """Appends one JSON line per finished request to a file (or the replica's log for '-')."""

    def __init__(self, path: str, *, static: dict[str, Any]):
        self._path = path
        self._static = static  # replica, layout: the same on every line of this process
        self._lock = threading.Lock()
        self._fd: int | None = None

    def write(self, rec: RequestRecord, *, e2e_s: float) -> None:
        line = {"timestamp_s": round(rec.arrival_s, 6), "model": rec.model, "route": rec.route, "status": rec.status,
                "prompt_tokens": rec.prompt_tokens, "output_tokens": rec.output_tokens,
                "ttft_s": None if rec.ttft_s is None else round(rec.ttft_s, 6), "e2e_s": round(e2e_s, 6),
                "finish_reason": rec.finish_reason, **self._static, "trace_id": rec.trace_id}
        data = json.dumps(line, separators=(",", ":")) + "\n"
        if self._path == "-":
            log.info("fleetserve.request %s", data.rstrip())
            return
        with self._lock:
            if self._fd is None:
                # O_APPEND: several replicas may share one file; each line is one write() below PIPE_BUF.
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, data.encode())


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class RequestTelemetry:
    """ASGI middleware: one SERVER span per request, the traceparent passed on, the request-log line.

    `role` names the hop ("router" or "replica"); `attributes` are the same on every span of this
    process (model, replica, layout); `request_log` is only given at replicas, so a request is
    logged once in both ingress modes.
    """

    def __init__(self, app: Any, *, role: str, model: str | None = None, attributes: dict[str, Any] | None = None,
                 request_log: RequestLog | None = None):
        self.app = app
        self.role = role
        self.model = model
        self._attrs = dict(attributes or {})
        self._log = request_log
        self._tracer = trace.get_tracer("fleetserve.ingress")

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        carrier = {k: _header(scope, k.encode()) for k in ("traceparent", "tracestate")}
        parent = _PROPAGATOR.extract({k: v for k, v in carrier.items() if v})
        rec = RequestRecord(arrival_s=time.time(), route=path, model=self.model)
        started = time.perf_counter()
        traced = not path.startswith(_UNTRACED_PREFIXES)
        span = (self._tracer.start_span(f"{scope.get('method', 'GET')} {path}", context=parent, kind=SpanKind.SERVER,
                                        attributes={"fleetserve.role": self.role, "http.request.method": scope.get("method", ""),
                                                    "url.path": path, **self._attrs})
                if traced else trace.INVALID_SPAN)
        ctx = trace.set_span_in_context(span, parent)
        rec.trace_id = _trace_id(span, carrier.get("traceparent"))
        # Downstream (router ──► replica, replica ──► vLLM) sees this span as the parent.
        out: dict[str, str] = {}
        _PROPAGATOR.inject(out, context=ctx)
        if out:
            scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in _TRACE_HEADERS]
                     + [(k.encode(), v.encode()) for k, v in out.items()]}

        async def tracked_send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                rec.status = msg["status"]
            await send(msg)

        ctx_token = otel_context.attach(ctx)
        try:
            with serving(rec):
                await self.app(scope, receive, tracked_send)
        except BaseException as e:
            rec.status = rec.status or 500
            span.record_exception(e)
            raise
        finally:
            otel_context.detach(ctx_token)
            self._finish(span, rec, e2e_s=time.perf_counter() - started)

    def _finish(self, span: Any, rec: RequestRecord, *, e2e_s: float) -> None:
        op = OPERATIONS.get(rec.route)
        if span.is_recording():
            attrs: dict[str, Any] = {"http.response.status_code": rec.status or 0}
            if op:
                attrs[gen_ai.GEN_AI_OPERATION_NAME] = op
                attrs[gen_ai.GEN_AI_PROVIDER_NAME] = "vllm"
            if rec.model:
                attrs[gen_ai.GEN_AI_REQUEST_MODEL] = rec.model
            if rec.prompt_tokens is not None:
                attrs[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] = rec.prompt_tokens
            if rec.output_tokens is not None:
                attrs[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] = rec.output_tokens
            if rec.finish_reason:
                attrs[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = (rec.finish_reason,)
            if rec.ttft_s is not None:
                attrs[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = rec.ttft_s
            span.set_attributes(attrs)
            if rec.status is not None and rec.status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {rec.status}"))
            span.end()
        if self._log is not None and op is not None:
            try:
                self._log.write(rec, e2e_s=e2e_s)
            except OSError as e:  # a full disk must not fail requests; say it once per failure kind
                log.warning("fleetserve: request log write failed: %r", e)


def _trace_id(span: Any, traceparent: str | None) -> str | None:
    sc = span.get_span_context()
    if sc.is_valid:
        return format(sc.trace_id, "032x")
    m = _TRACEPARENT.match(traceparent or "")
    return m.group(1) if m else None  # tracing off: still join the client's trace id
