"""Traces of real streamed requests to the tiny vLLM model, read from the SDK's in-memory exporter.

The replica's own stack (RequestTelemetry ──► Gate ──► EngineGuard ──► vLLM's OpenAI app ──►
AsyncLLM with vLLM's tracing on) runs in this process behind uvicorn on a free port, so the
in-memory exporter sees every span; real HTTP streaming through the openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

import openai
import pytest
import uvicorn

from conftest import free_port, wait_until
from serve_app.ingress.gate import OPENAI_ROUTES, Gate, GateSpec
from serve_app.schema import ModelConfig, TelemetryConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TOKENS = 8
_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@pytest.fixture(scope="module")
def replica(span_exporter, tmp_path_factory):
    from cluster.planner.layout import plan_layout
    from serve_app.deployment import ReplicaSpec, start_engine, wrap_engine_app
    from serve_app.engines.registry import engine_class
    from serve_app.telemetry import TracingSettings
    from serve_app.tiny_models import ensure_tiny_model

    log_path = tmp_path_factory.mktemp("reqlog") / "requests.jsonl"
    telemetry = TelemetryConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces", request_log=str(log_path))
    model = ModelConfig(name="tiny-dense", source="tiny:dense", max_model_len=512, placement={"accelerator": "CPU"},
                        engine_args={"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 4})
    spec = ReplicaSpec(model=model, model_index=0, model_dir=str(ensure_tiny_model("dense")),
                       layout=plan_layout(model), engine=engine_class("vllm"), telemetry=telemetry)
    saved = dict(os.environ)
    os.environ.update(_ENV)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = engine = None
    try:
        # The endpoint only switches vLLM's tracing on: the spans go to the in-memory provider
        # installed first, as in a replica (vLLM's own provider is refused by the OTel API).
        endpoint = TracingSettings.resolve(telemetry, env={}).endpoint
        engine = asyncio.run_coroutine_threadsafe(start_engine(spec, traces_endpoint=endpoint), loop).result(300)
        guarded, front = wrap_engine_app(engine, spec, replica="replica-1", layout="tp1-pp1-ep1/mp")
        app = front(Gate(guarded, GateSpec(routes=OPENAI_ROUTES, public=("/health",))))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        asyncio.run_coroutine_threadsafe(server.serve(), loop)
        wait_until(lambda: server.started, timeout_s=30, what="uvicorn to listen")
        yield f"http://127.0.0.1:{port}", log_path
        print("request log:\n" + log_path.read_text())
    finally:
        async def stop():
            if server is not None:
                server.should_exit = True
            if engine is not None:
                engine.shutdown()  # cancels vLLM's output handler on this loop
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        os.environ.clear()
        os.environ.update(saved)


def _stream(base_url: str, traceparent: str | None) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    headers = {"traceparent": traceparent} if traceparent else {}
    stream = client.chat.completions.create(
        model="tiny-dense", messages=[{"role": "user", "content": "Tell me something"}], max_tokens=TOKENS, stream=True,
        extra_body={"ignore_eos": True}, extra_headers=headers)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _of_trace(exporter, trace_id: str):
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


def test_span_tree_of_a_streamed_request_keeps_the_client_trace(replica, span_exporter):
    base_url, _ = replica
    _stream(base_url, f"00-{TRACE_ID}-{CLIENT_SPAN}-01")
    # The replica span ends after the last byte left, so the client may be first: poll.
    spans = wait_until(lambda: (s := _of_trace(span_exporter, TRACE_ID)) and len(s) >= 5 and s, timeout_s=30,
                       what="the request's five spans")
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"POST /v1/chat/completions", "llm_request", "queued", "prefill", "decode"}
    front, engine = by_name["POST /v1/chat/completions"], by_name["llm_request"]
    # client ──► replica span ──► vLLM's llm_request ──► queued / prefill / decode
    assert format(front.parent.span_id, "016x") == CLIENT_SPAN
    assert engine.parent.span_id == front.context.span_id
    for phase in ("queued", "prefill", "decode"):
        assert by_name[phase].parent.span_id == engine.context.span_id
    assert by_name["queued"].end_time == by_name["prefill"].start_time
    assert by_name["prefill"].end_time == by_name["decode"].start_time
    a = front.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "tiny-dense"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] == TOKENS
    assert a["gen_ai.response.finish_reasons"] == ("length",) and a["http.response.status_code"] == 200
    assert a["fleetserve.layout"] == "tp1-pp1-ep1/mp" and a["fleetserve.replica"] == "replica-1"
    assert a["gen_ai.response.time_to_first_chunk"] > 0
    e = engine.attributes  # vLLM's own names and numbers
    assert e["gen_ai.usage.completion_tokens"] == TOKENS and e["gen_ai.usage.prompt_tokens"] == a["gen_ai.usage.input_tokens"]
    assert front.resource.attributes["service.name"] == "fleetserve"


def test_sampled_out_request_produces_no_spans(replica, span_exporter):
    base_url, log_path = replica
    other = "1af7651916cd43dd8448eb211c80319d"
    before = len(span_exporter.get_finished_spans())
    assert _stream(base_url, f"00-{other}-{CLIENT_SPAN}-00")
    assert _stream(base_url, None)  # no traceparent, sampling ratio 0
    # The request log line is written where the span would end: once it is there, nothing is pending.
    wait_until(lambda: sum(json.loads(x)["trace_id"] == other for x in log_path.read_text().splitlines()),
               timeout_s=30, what="the sampled-out request's log line")
    assert len(span_exporter.get_finished_spans()) == before


def test_request_log_has_one_line_per_request_the_replay_reads(replica):
    base_url, log_path = replica
    tid = "2af7651916cd43dd8448eb211c80319e"
    _stream(base_url, f"00-{tid}-{CLIENT_SPAN}-00")
    line = wait_until(lambda: next((json.loads(x) for x in log_path.read_text().splitlines()
                                    if json.loads(x)["trace_id"] == tid), None), timeout_s=30, what="the log line")
    assert line["status"] == 200 and line["output_tokens"] == TOKENS and line["prompt_tokens"] > 0
    assert line["model"] == "tiny-dense" and line["replica"] == "replica-1" and line["finish_reason"] == "length"
    assert 0 < line["ttft_s"] <= line["e2e_s"]
    assert "Tell me something" not in log_path.read_text()
    traces = pytest.importorskip("serve_app.autoscaling.traces", reason="the replay's trace reader (branch replay)")
    trace = traces.read_trace(log_path)
    assert len(trace) == len(log_path.read_text().splitlines()) and TOKENS in trace.output_tokens
