"""Telemetry without an engine: settings precedence, the request middleware over a real ASGI app, phase spans.

Spans go to the SDK's in-memory exporter (tests/conftest.py `span_exporter`, sampling ratio 0),
so a request is traced exactly when its traceparent carries the sampled flag.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from serve_app.errors import ConfigError
from serve_app.ingress.gate import OPENAI_ROUTES, Gate, GateSpec
from serve_app.schema import KeyLimits, TelemetryConfig, parse_config
from serve_app.telemetry import LOG_FIELDS, RequestLog, RequestTelemetry, TracingSettings, current_request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _settings(env, **cfg):
    return TracingSettings.resolve(TelemetryConfig(**cfg), env=env)


@pytest.mark.parametrize("env, cfg, endpoint, protocol, source", [
    ({}, {}, None, "http/protobuf", ""),
    ({}, {"otlp_endpoint": "http://c:4318/v1/traces"}, "http://c:4318/v1/traces", "http/protobuf", "telemetry.otlp_endpoint"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://e:4317"}, {"otlp_endpoint": "http://c:4318/v1/traces"},
     "http://e:4317", "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    # The generic variable names the collector; http/protobuf appends the traces path (OTel spec).
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://g:4318/"}, {}, "http://g:4318/v1/traces", "http/protobuf",
     "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://g:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, {}, "http://g:4317", "grpc",
     "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, {"otlp_endpoint": "http://c:4317", "otlp_protocol": "http/protobuf"},
     "http://c:4317", "grpc", "telemetry.otlp_endpoint"),
])
def test_environment_wins_over_the_telemetry_block(env, cfg, endpoint, protocol, source):
    s = _settings(env, **cfg)
    assert (s.endpoint, s.protocol, s.endpoint_source, s.enabled) == (endpoint, protocol, source, endpoint is not None)


def test_sampler_and_service_name_sources():
    s = _settings({"OTEL_TRACES_SAMPLER": "always_on", "OTEL_SERVICE_NAME": "edge"}, sampling_ratio=0.5, service_name="x")
    assert s.sampler_from_env and s.service_name == "edge" and s.sampling_ratio == 0.5
    s = _settings({}, sampling_ratio=0.25, service_name="x")
    assert not s.sampler_from_env and s.service_name == "x"


def test_unknown_protocol_from_the_environment_names_the_variable():
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        _settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "zipkin"}, otlp_endpoint="http://c")


def test_every_telemetry_field_is_documented_and_unknown_ones_are_refused():
    for name, f in TelemetryConfig.model_fields.items():
        assert f.description, name
    with pytest.raises(Exception, match="telemetry"):
        parse_config({"telemetry": {"exporter": "jaeger"}, "models": [{"name": "m", "source": "tiny:dense"}]})


def _echo_app():
    """A real ASGI app standing in for vLLM's: streams 3 chunks and reports as the engine adapter does."""
    seen: list[dict] = []

    async def chat(request: Request):
        seen.append(dict(request.headers))
        body = await request.json()

        async def stream():
            for i in range(3):
                yield f"data: {json.dumps({'i': i})}\n\n".encode()
            rec = current_request()
            rec.engine_output(prompt_tokens=len(body["prompt"].split()), output_tokens=3, ttft_s=0.01,
                              finish_reason="length")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), seen


def _post(app, headers, body=None):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/v1/chat/completions", json=body or {"prompt": "SECRET PROMPT TEXT"}, headers=headers)

    import asyncio

    return asyncio.run(go())


def _spans(exporter, trace_id):
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


def test_request_span_keeps_the_client_trace_and_passes_its_own_parent_on(span_exporter, tmp_path):
    inner, seen = _echo_app()
    log_path = tmp_path / "requests.jsonl"
    gate = Gate(inner, GateSpec(routes=OPENAI_ROUTES, public=("/health",), inline_keys=("sk-secret",)))
    app = RequestTelemetry(gate, role="replica", model="tiny", attributes={"fleetserve.layout": "tp1-pp1-ep1/mp"},
                           request_log=RequestLog(str(log_path), static={"replica": "r1", "layout": "tp1-pp1-ep1/mp"}))
    r = _post(app, {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "authorization": "Bearer sk-secret"})
    assert r.status_code == 200
    (span,) = _spans(span_exporter, TRACE_ID)
    assert format(span.parent.span_id, "016x") == CLIENT_SPAN and span.kind == trace.SpanKind.SERVER
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "tiny"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (3, 3)
    assert a["gen_ai.response.finish_reasons"] == ("length",) and a["http.response.status_code"] == 200
    assert a["fleetserve.layout"] == "tp1-pp1-ep1/mp"
    # The app behind sees OUR span as its parent, in the same trace.
    assert seen[0]["traceparent"] == f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01"
    (line,) = log_path.read_text().splitlines()
    rec = json.loads(line)
    assert tuple(rec) == LOG_FIELDS
    assert rec["trace_id"] == TRACE_ID and rec["status"] == 200 and rec["output_tokens"] == 3 and rec["replica"] == "r1"
    assert "SECRET" not in line and "sk-secret" not in line  # never a prompt's text or a key


def test_sampled_out_request_gives_no_span_but_keeps_its_trace_id_in_the_log(span_exporter, tmp_path):
    inner, seen = _echo_app()
    log_path = tmp_path / "requests.jsonl"
    app = RequestTelemetry(inner, role="replica", model="tiny", request_log=RequestLog(str(log_path), static={}))
    other = "5bf92f3577b34da6a3ce929d0e0e4737"
    before = len(span_exporter.get_finished_spans())
    assert _post(app, {"traceparent": f"00-{other}-{CLIENT_SPAN}-00"}).status_code == 200
    assert _post(app, {}).status_code == 200  # no traceparent at ratio 0
    assert len(span_exporter.get_finished_spans()) == before
    assert seen[0]["traceparent"].startswith(f"00-{other}-") and seen[0]["traceparent"].endswith("-00")
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert lines[0]["trace_id"] == other
    # No traceparent: a new trace id (not sampled), still passed on and logged, so the line can be joined.
    assert len(lines[1]["trace_id"]) == 32 and seen[1]["traceparent"].split("-")[1] == lines[1]["trace_id"]


def test_gate_refusals_reach_the_counter_and_the_span(span_exporter):
    inner, _ = _echo_app()
    refused: list[tuple[int, str]] = []
    spec = GateSpec(routes=OPENAI_ROUTES, public=(), inline_keys=("k",), key_limits=KeyLimits(max_concurrent_requests=1,
                                                                                              requests_per_s=0.001, burst=1))
    app = RequestTelemetry(Gate(inner, spec, on_refused=lambda s, r: refused.append((s, r))), role="router")
    tid = "6bf92f3577b34da6a3ce929d0e0e4738"
    hdrs = {"authorization": "Bearer k", "traceparent": f"00-{tid}-{CLIENT_SPAN}-01"}
    assert _post(app, hdrs).status_code == 200
    assert _post(app, hdrs).status_code == 429
    assert refused == [(429, "key_limit")]
    codes = sorted(s.attributes["http.response.status_code"] for s in _spans(span_exporter, tid))
    assert codes == [200, 429]


def test_phase_spans_are_children_of_vllms_span_laid_out_from_its_timings(span_exporter):
    tid = "7bf92f3577b34da6a3ce929d0e0e4739"
    parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
        int(tid, 16), int(CLIENT_SPAN, 16), is_remote=True, trace_flags=trace.TraceFlags(1))))
    tracer = trace.get_tracer("vllm.test")
    start = 1_000_000_000_000
    span = tracer.start_span("llm_request", context=parent, start_time=start, attributes={
        "gen_ai.latency.time_to_first_token": 0.5, "gen_ai.latency.time_in_queue": 0.1,
        "gen_ai.latency.time_in_model_prefill": 0.3, "gen_ai.latency.time_in_model_decode": 2.0})
    span.end(end_time=start + 3_000_000_000)
    phases = {s.name: s for s in _spans(span_exporter, tid) if s.name != "llm_request"}
    assert set(phases) == {"queued", "prefill", "decode"}
    assert all(s.parent.span_id == span.context.span_id for s in phases.values())
    ms = {n: ((s.start_time - start) // 1_000_000, (s.end_time - start) // 1_000_000) for n, s in phases.items()}
    assert ms == {"queued": (100, 200), "prefill": (200, 500), "decode": (500, 2500)}


def test_telemetry_package_imports_neither_ray_nor_vllm():
    import subprocess
    import sys

    code = "import sys, serve_app.telemetry; bad = [m for m in ('ray', 'vllm', 'locust') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_engine_metrics_off_exports_no_vllm_metrics_from_the_replica():
    # ModelServer starts the engine with this label; None is what keeps vLLM's Ray stat logger out
    # (VLLMEngine.start_from_args). Measured cost of leaving it on: BENCHMARKS.md, issue 16 item 2.
    from cluster.planner.layout import plan_layout
    from serve_app.deployment import ReplicaSpec
    from serve_app.schema import ModelConfig

    model = ModelConfig(name="m", source="tiny:dense", placement={"accelerator": "CPU"})

    def spec(**telemetry) -> ReplicaSpec:
        return ReplicaSpec(model=model, model_index=0, model_dir="", layout=plan_layout(model), engine=None,
                           telemetry=TelemetryConfig(**telemetry))

    assert spec().engine_metrics_layout("tp1-pp1-ep1/mp") == "tp1-pp1-ep1/mp"
    assert spec(engine_metrics=False).engine_metrics_layout("tp1-pp1-ep1/mp") is None
