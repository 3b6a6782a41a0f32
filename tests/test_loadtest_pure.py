"""Pure parts of loadtest: lengths, shapes (time passed in), arrivals, workload, stream timing, results.

No locust here (it gevent-patches the importer); one test checks that in a fresh process.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import (
    ArrivalCursor, ConstantShape, FixedLength, LoadPlan, LoadTestError, LogNormalLength, NormalLength, PoissonShape,
    RunResults, SpikeShape, StepShape, UniformLength, Workload, build_plan, host_from_config, load_trace,
    models_from_config, parse_duration, parse_length, plan_tick, poisson_times,
)
from loadtest.results import build_results, metric_stats, percentile
from loadtest.stream import StreamTimer
from serve_app.config import DEFAULT_CONFIG_PATH, load_config

SCHEMA_FILE = Path(__file__).parents[1] / "loadtest" / "results.schema.json"

# -- lengths -----------------------------------------------------------------------------------

dists = st.one_of(
    st.builds(FixedLength, tokens=st.integers(1, 10_000)),
    st.integers(1, 5000).flatmap(lambda lo: st.builds(UniformLength, min_tokens=st.just(lo),
                                                      max_tokens=st.integers(lo, lo + 5000))),
    st.builds(NormalLength, mean_tokens=st.floats(1, 5000), std_tokens=st.floats(0, 2000)),
    st.builds(LogNormalLength, median_tokens=st.floats(1, 5000), sigma=st.floats(0, 2)),
)


@given(dists, st.integers(0, 2**32))
def test_lengths_are_positive_bounded_and_seeded(dist, seed):
    a = [dist.sample(random.Random(seed)) for _ in range(3)]
    b = [dist.sample(random.Random(seed)) for _ in range(3)]
    assert a == b and all(isinstance(n, int) and n >= 1 for n in a)
    if isinstance(dist, UniformLength):
        assert all(dist.min_tokens <= n <= dist.max_tokens for n in a)


@pytest.mark.parametrize("spec, expected", [
    ("128", FixedLength(tokens=128)), (64, FixedLength(tokens=64)), ("fixed:7", FixedLength(tokens=7)),
    ("uniform:64-256", UniformLength(min_tokens=64, max_tokens=256)),
    ("normal:128,32", NormalLength(mean_tokens=128, std_tokens=32)),
    ("lognormal:100,0.5", LogNormalLength(median_tokens=100, sigma=0.5)),
])
def test_parse_length(spec, expected):
    assert parse_length(spec) == expected


@pytest.mark.parametrize("spec", ["zipf:3", "uniform:9-3", "normal:1", "abc", "0"])
def test_parse_length_errors_name_the_option(spec):
    with pytest.raises(LoadTestError, match="--output-len"):
        parse_length(spec, field="--output-len")


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("2m", 120), ("1h30m", 5400), ("1.5s", 1.5),
                                           (None, None), ("", None), (7, 7)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage():
    with pytest.raises(LoadTestError, match="--duration='soon'"):
        parse_duration("soon", field="--duration")


# -- shapes: time is an argument ---------------------------------------------------------------

@given(st.integers(1, 50), st.integers(1, 20), st.floats(0.5, 60), st.integers(1, 500),
       st.lists(st.floats(0, 10_000), min_size=2, max_size=20))
def test_step_shape_grows_in_steps_up_to_the_cap(start, step, step_s, cap_extra, times):
    shape = StepShape(start_users=start, step_users=step, step_s=step_s, max_users=start + cap_extra)
    users = [shape.tick(t)[0] for t in sorted(times)]
    assert users == sorted(users) and all(start <= u <= start + cap_extra for u in users)
    for k in range(4):
        assert shape.tick(k * step_s + step_s / 2)[0] == min(start + k * step, start + cap_extra)


@given(st.floats(0, 100), st.floats(0.1, 100), st.floats(0, 300))
def test_spike_shape_is_high_only_inside_the_window(at, length, t):
    shape = SpikeShape(base_users=2, spike_users=20, spike_at_s=at, spike_s=length)
    assert shape.tick(t)[0] == (20 if at <= t < at + length else 2)


@given(st.floats(1, 1000), st.floats(0, 30), st.floats(0, 2000))
def test_plan_tick_holds_during_drain_then_stops(duration, drain, t):
    shape = StepShape(start_users=1, step_users=1, step_s=1.0)
    tick = plan_tick(shape, t, duration_s=duration, drain_s=drain)
    if t >= duration + drain:
        assert tick is None
    else:
        assert tick == shape.tick(min(t, duration))


def test_open_loop_shapes_start_all_carriers_at_once():
    assert PoissonShape(rate_rps=5, users=40).tick(0) == (40, 40.0)
    assert PoissonShape.open_loop and not ConstantShape.open_loop and not StepShape.open_loop


def test_step_shape_refuses_cap_below_start():
    with pytest.raises(ValueError, match="max_users"):
        StepShape(start_users=10, max_users=5)


# -- arrivals ----------------------------------------------------------------------------------

def _take_until(it, until):
    out = []
    for t in it:
        if t >= until:
            return out
        out.append(t)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.floats(10, 50))
def test_poisson_times_are_seeded_increasing_and_hit_the_rate(seed, rate):
    a = _take_until(poisson_times(rate, seed), 3600)
    assert a == _take_until(poisson_times(rate, seed), 3600)
    assert all(x < y for x, y in zip(a, a[1:]))
    assert len(a) / 3600 == pytest.approx(rate, rel=0.03)  # > 5 sigma: >= 36,000 arrivals, 0.53 % std


def test_live_poisson_schedule_has_its_rate_within_5_percent():
    # The 60 s, 20 req/s, seed 0 schedule the live test delivers (a Poisson count has 2.9 % std there).
    n = len(_take_until(poisson_times(20.0, 0), 60.0))
    assert abs(n - 1200) / 1200 < 0.05


@given(st.integers(1, 6), st.floats(0.5, 30), st.integers(0, 100))
def test_processes_split_the_global_schedule_exactly(count, until, seed):
    glob = list(enumerate(_take_until(poisson_times(10, seed), until)))
    shares = []
    for i in range(count):
        cur = ArrivalCursor(poisson_times(10, seed), index=i, count=count, until_s=until)
        while (nxt := cur.claim()) is not None:
            shares.append(nxt)
    assert sorted(shares) == glob


def test_cursor_refuses_bad_index():
    with pytest.raises(LoadTestError, match="process index 2"):
        ArrivalCursor([0.0], index=2, count=2)


def test_trace_is_sorted_shifted_scaled(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"start_unix_s": 1000.5, "input_tokens": 5, "output_tokens": 9, "model": "m"}\n\n'
                 '{"start_unix_s": 1000.0}\n{"start_unix_s": 1002.0, "output_tokens": 3}\n')
    rows = load_trace(p, time_scale=2.0)
    assert [r.t_s for r in rows] == [0.0, 0.25, 1.0]
    assert (rows[1].input_tokens, rows[1].output_tokens, rows[1].model) == (5, 9, "m")


@pytest.mark.parametrize("line, match", [('{"x": 1}', "line 1"), ('{"t_s": 1, "output_tokens": 0}', "positive"),
                                         ("not json", "line 1")])
def test_trace_errors_name_line(tmp_path, line, match):
    p = tmp_path / "t.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(LoadTestError, match=match):
        load_trace(p)


# -- plan and workload -------------------------------------------------------------------------

def test_models_and_host_come_from_the_config():
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert models_from_config(cfg) == ("tiny-dense", "tiny-moe")
    assert models_from_config(cfg, ["tiny-moe"]) == ("tiny-moe",)
    assert host_from_config(cfg) == "http://127.0.0.1:8000"
    with pytest.raises(LoadTestError, match="not served by the config.*tiny-dense, tiny-moe"):
        models_from_config(cfg, ["gpt-9"])


@pytest.mark.parametrize("kw, match", [(dict(shape="poisson"), "--rate"), (dict(shape="trace"), "--trace"),
                                       (dict(shape="ramp"), "unknown"), (dict(users=0), "users")])
def test_build_plan_errors_name_the_option(kw, match):
    with pytest.raises(LoadTestError, match=match):
        build_plan(models=["m"], **kw)


def test_plan_file_roundtrip_and_errors(tmp_path):
    plan = build_plan(models=["a", "b"], shape="poisson", rate_rps=3, users=4, duration_s=10, input_len="uniform:5-9")
    assert LoadPlan.from_file(plan.to_file(tmp_path / "p.json")) == plan
    bad = json.loads((tmp_path / "p.json").read_text()) | {"drain_s": -1}
    (tmp_path / "p.json").write_text(json.dumps(bad))
    with pytest.raises(LoadTestError, match="drain_s"):
        LoadPlan.from_file(tmp_path / "p.json")


def test_requests_are_a_function_of_seed_and_index_only():
    plan = build_plan(models=["a", "b"], input_len="uniform:4-40", output_len="normal:20,5", seed=7)
    one, other = Workload(plan, index=0, count=1), Workload(plan, index=1, count=3)
    assert one.request(5) == other.request(5)
    assert [one.request(i).model for i in range(4)] == ["a", "b", "a", "b"]
    assert [other.next_request(0).index for _ in range(3)] == [1, 4, 7]  # closed loop: i = index + k * count
    r = one.request(3)
    assert len(r.messages[0]["content"].split()) == r.input_tokens
    chat = r.body("chat", ignore_eos=True)
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True} and chat["ignore_eos"]
    assert chat["max_tokens"] == r.max_tokens and chat["messages"][0]["role"] == "user"
    assert "prompt" in r.body("completions", ignore_eos=False) and "ignore_eos" not in r.body("completions", ignore_eos=False)


def test_closed_loop_stops_at_duration_and_open_loop_at_schedule_end(tmp_path):
    closed = Workload(build_plan(models=["m"], duration_s=10))
    assert closed.next_request(9.9) is not None and closed.next_request(10.0) is None
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"t_s": t, "input_tokens": 3, "output_tokens": 4 + t}) + "\n" for t in range(5)))
    wl = Workload(build_plan(models=["m"], shape="trace", trace_path=str(trace), duration_s=3.5), index=1, count=2)
    got = [wl.next_request(0) for _ in range(3)]
    assert [(r.index, r.due_s, r.max_tokens, r.input_tokens) for r in got[:2]] == [(1, 1.0, 5, 3), (3, 3.0, 7, 3)]
    assert got[2] is None and wl.arrivals_claimed == 2


def test_dataset_prompts(tmp_path):
    ds = tmp_path / "d.jsonl"
    ds.write_text('{"prompt": "hello there"}\n{"messages": [{"role": "user", "content": "x"}], "output_tokens": 5}\n')
    wl = Workload(build_plan(models=["m"], dataset_path=str(ds), output_len=9))
    assert wl.request(0).messages[0]["content"] == "hello there" and wl.request(0).max_tokens == 9
    assert wl.request(1).max_tokens == 5
    ds.write_text('{"text": 1}\n')
    with pytest.raises(LoadTestError, match="line 1"):
        Workload(build_plan(models=["m"], dataset_path=str(ds)))


# -- stream timing: the clock is passed in -----------------------------------------------------

def _sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def _chat(content=None, role=False):
    return {"choices": [{"delta": {"role": "assistant", "content": ""} if role else {"content": content}}]}


def test_stream_timer_times_first_content_not_headers_or_role_chunk():
    t = StreamTimer(start_s=10.0)
    t.feed(_sse(_chat(role=True)), 10.001)
    t.feed(_sse(_chat("a"))[:9], 10.100)  # a line split across reads counts when it completes
    t.feed(_sse(_chat("a"))[9:], 10.102)
    t.feed(_sse(_chat("b")) + _sse(_chat("c")), 10.122)
    t.feed(_sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}) + _sse(b"[DONE]"), 10.125)
    r = t.finish(10.126)
    assert r.ok and r.ttft_s == pytest.approx(0.102) and r.output_tokens == 3 and r.prompt_tokens == 4
    assert r.itl_s == pytest.approx([0.020, 0.0]) and r.e2e_s == pytest.approx(0.126)
    assert r.tpot_s == pytest.approx((0.126 - 0.102) / 2)


def test_stream_timer_counts_chunks_without_usage_and_reads_completions_text():
    t = StreamTimer(0.0)
    t.feed(_sse({"choices": [{"text": "x"}]}) + _sse({"choices": [{"text": "y"}]}) + _sse(b"[DONE]"), 1.0)
    r = t.finish(1.0)
    assert r.ok and r.output_tokens == 2 and r.tpot_s == 0.0


@pytest.mark.parametrize("body, error, match", [
    (_sse(_chat("a")), None, "without data: \\[DONE\\]"),
    (_sse(_chat("a")) + _sse({"error": {"message": "boom"}}) + _sse(b"[DONE]"), None, "boom"),
    (_sse(_chat(role=True)) + _sse(b"[DONE]"), None, "no content"),
    (_sse(_chat("a")), "ProtocolError: reset", "reset"),
])
def test_stream_timer_failures(body, error, match):
    t = StreamTimer(0.0)
    t.feed(body, 0.5)
    r = t.finish(0.6, error=error)
    assert not r.ok and pytest.approx(0.6) == r.e2e_s
    assert match and __import__("re").search(match, r.error)


# -- results -----------------------------------------------------------------------------------

@given(st.lists(st.integers(0, 500), min_size=1, max_size=300), st.sampled_from([50, 90, 95, 99, 100]))
def test_percentile_is_nearest_rank(samples, q):
    hist: dict[float, int] = {}
    for s in samples:
        hist[float(s)] = hist.get(float(s), 0) + 1
    ranked = sorted(samples)
    k = max(1, -(-len(ranked) * q // 100))  # ceil(n q / 100)
    assert percentile(hist, q) == ranked[k - 1]


def _entry(model, metric, times, failures=0, length=0):
    hist: dict[str, int] = {}
    for t in times:
        hist[repr(float(t))] = hist.get(repr(float(t)), 0) + 1
    return {"model": model, "metric": metric, "num_requests": len(times), "num_failures": failures,
            "total_response_time": sum(times), "min_response_time": min(times), "max_response_time": max(times),
            "total_content_length": length, "response_times": hist}


def test_build_results_merges_models_and_checks_process_totals():
    plan = build_plan(models=["a", "b"], duration_s=2)
    recs = [dict(i=i, proc="worker-0", model="a", start_unix_s=100.0 + 0.5 * i, input_tokens=3, max_tokens=4,
                 output_tokens=4, e2e_ms=700.0, ok=i != 1, error=None if i != 1 else "HTTP 500: x") for i in range(4)]
    from loadtest.results import RequestRecord
    stats = {"t0_unix_s": 100.0, "end_unix_s": 104.0, "entries": [
        _entry("a", "TTFT", [100, 102, 104]), _entry("b", "TTFT", [200]), _entry("a", "E2E", [700] * 4, 1, 12)],
        "errors": [{"model": "a", "metric": "E2E", "error": "HTTP 500: x", "occurrences": 1}]}
    procs = [{"proc": "worker-0", "index": 0, "events": [
        {"model": "a", "metric": "TTFT", "count": 3, "failures": 0, "response_length_sum": 0},
        {"model": "b", "metric": "TTFT", "count": 1, "failures": 0, "response_length_sum": 0},
        {"model": "a", "metric": "E2E", "count": 3, "failures": 1, "response_length_sum": 12}]}]
    r = build_results(stats=stats, processes=procs, records=[RequestRecord(**x) for x in recs], plan=plan,
                      host="h", workers=1)
    assert r.metrics["TTFT"].count == 4 and r.metrics["TTFT"].p50 == 102 and r.per_model["b"]["TTFT"].p50 == 200
    assert (r.requests.total, r.requests.ok, r.requests.failed) == (4, 3, 1)
    assert r.output_tokens == 12 and r.sent_rps == 2.0 and r.duration_s == pytest.approx(2.2)
    assert [p.started for p in r.timeline] == [2, 2, 0] and [p.in_flight for p in r.timeline] == [1, 1, 0]
    assert r.process_count("E2E") == 3 and any("E2E: the master merged 4" in n for n in r.notes)
    assert RunResults.model_validate_json(r.model_dump_json()) == r


def test_replay_trace_is_the_autoscaling_replays_input():
    from serve_app.autoscaling.replay import parse_trace

    from loadtest.results import RequestRecord, replay_trace

    recs = [RequestRecord(i=i, proc="local", model="m", start_unix_s=10.0 + 0.25 * i, input_tokens=1, max_tokens=1,
                          output_tokens=1, ttft_ms=40.0 + i, e2e_ms=1500.0, ok=True) for i in range(8)]
    r = build_results(stats={"t0_unix_s": 10.0, "end_unix_s": 14.0, "entries": []}, processes=[], records=recs,
                      plan=build_plan(models=["m"], duration_s=2), host="h", workers=0)
    points = parse_trace("\n".join(json.dumps(p) for p in replay_trace(r)))
    assert [p.in_flight_requests for p in points] == [p.in_flight for p in r.timeline] == [4, 6, 2, 0]
    assert points[0].ttft_s == pytest.approx(0.0415) and r.timeline[0].ttft_p50_ms == 41.5


def test_metric_stats_of_nothing():
    assert metric_stats([]).p50 is None


def test_results_schema_file_is_current():
    current = json.dumps(RunResults.model_json_schema(), indent=1, sort_keys=True) + "\n"
    assert SCHEMA_FILE.exists() and SCHEMA_FILE.read_text() == current, (
        "loadtest/results.schema.json is stale; regenerate: python -c \"import json; from loadtest import RunResults; "
        "print(json.dumps(RunResults.model_json_schema(), indent=1, sort_keys=True))\" > loadtest/results.schema.json")


def test_pure_modules_and_cli_do_not_import_locust_or_ray():
    code = ("import sys, loadtest, loadtest.cli, loadtest.runner, loadtest.stream, loadtest._runtime; "
            "bad = [m for m in ('locust', 'gevent', 'ray', 'vllm') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_reports_bad_options(tmp_path):
    from typer.testing import CliRunner

    from loadtest.cli import cli

    res = CliRunner().invoke(cli, ["run", "--host", "http://127.0.0.1:9", "--model", "m", "--shape", "poisson",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--rate" in res.output
    res = CliRunner().invoke(cli, ["collect", str(tmp_path)])
    assert res.exit_code == 2 and "locust-stats.json is missing" in res.output
