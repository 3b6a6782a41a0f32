"""The LLM user against a streaming server with known latencies, in locust subprocesses.

Locust gevent-patches the process that imports it, so every run here is `python -m locust`
in a subprocess (through loadtest.runner, or plain `locust -f`).
"""

from __future__ import annotations

import csv
import json
import socket
import statistics
import subprocess
import sys

import pytest
from loadtest_helpers.metrics_server import metrics_server
from loadtest_helpers.server import sse_server
from test_loadtest_server_series import scrape_text

from loadtest import build_plan, collect_results, read_requests, run
from loadtest.runner import LOCUSTFILE

pytestmark = pytest.mark.timeout(180)

TTFT_MS, ITL_MS, TOKENS = 100.0, 20.0, 16
TOLERANCE_MS = 5.0


@pytest.fixture(scope="module")
def known_latency_run(tmp_path_factory):
    """One 8 s local run: half the requests to a healthy model, the rest to two failing ones."""
    out = tmp_path_factory.mktemp("live")
    # A small metrics endpoint beside it: the run scrapes it into results.server.
    metrics_text = scrape_text({"r1": {"waiting_requests": 2, "running_requests": 1}},
                               model=("sim", "fail-500", "fail-stream"), target=1)
    with sse_server(ttft_ms=TTFT_MS, itl_ms=ITL_MS) as url, metrics_server(metrics_text) as metrics:
        plan = build_plan(models=["sim", "fail-500", "sim", "fail-stream"], users=4, spawn_rate=4, duration_s=8,
                          drain_s=2, input_len=8, output_len=TOKENS, progress_interval_s=2)
        lines: list[str] = []
        results = run(url, plan, out_dir=out, workers=0, progress=lines.append, metrics=[metrics + "/metrics"])
    return results, out, lines


def test_ttft_and_itl_within_5ms_of_the_servers(known_latency_run):
    results, out, _ = known_latency_run
    sim = results.per_model["sim"]
    assert sim["TTFT"].count >= 20 and sim["ITL"].count == sim["TTFT"].count * (TOKENS - 1)
    # Locust's own percentiles (what its table, CSV and UI show) ...
    assert abs(sim["TTFT"].p50 - TTFT_MS) <= TOLERANCE_MS, sim["TTFT"]
    assert abs(sim["ITL"].p50 - ITL_MS) <= TOLERANCE_MS, sim["ITL"]
    assert abs(sim["TPOT"].p50 - ITL_MS) <= TOLERANCE_MS, sim["TPOT"]
    assert abs(sim["E2E"].p50 - (TTFT_MS + (TOKENS - 1) * ITL_MS)) <= 2 * TOLERANCE_MS, sim["E2E"]
    # ... and the exact per-request log agree.
    ok = [r for r in read_requests(out / "requests.jsonl") if r.ok]
    assert abs(statistics.median(r.ttft_ms for r in ok) - TTFT_MS) <= TOLERANCE_MS
    assert all(r.output_tokens == TOKENS and r.model == "sim" for r in ok)
    print(f"TTFT p50 {sim['TTFT'].p50} ms (true {TTFT_MS}), ITL p50 {sim['ITL'].p50} ms (true {ITL_MS}), "
          f"TPOT p50 {sim['TPOT'].p50} ms, E2E p50 {sim['E2E'].p50} ms")


def test_the_run_scraped_its_metrics_endpoint_from_before_the_start_to_the_end(known_latency_run):
    results, _, _ = known_latency_run
    s = results.server
    assert s is not None and s.scrapes_failed == 0 and s.interval_s == 1.0
    assert set(s.models) == {"sim", "fail-500", "fail-stream"}
    pts = s.models["sim"].points
    assert pts[0].t_s < 0.5 and pts[-1].t_s >= results.plan.duration_s  # the whole run, on its time base
    assert {(p.waiting_requests, p.running_requests, p.replicas, p.target_replicas) for p in pts} == {(2, 1, 1, 1)}


def test_failures_are_failure_events_with_the_error(known_latency_run):
    results, out, _ = known_latency_run
    for model in ("fail-500", "fail-stream"):
        e2e = results.per_model[model]["E2E"]
        assert e2e.count > 0 and e2e.failures == e2e.count
        assert set(results.per_model[model]) == {"E2E"}  # no latency events from failed requests
    errors = {f.model: f.error for f in results.failures}
    assert "HTTP 500" in errors["fail-500"] and "injected failure" in errors["fail-500"]
    assert errors["fail-stream"]  # the broken connection's error
    assert results.requests.failed == sum(results.per_model[m]["E2E"].count for m in ("fail-500", "fail-stream"))


def test_outputs_csv_progress_and_totals(known_latency_run):
    results, out, lines = known_latency_run
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(open(out / "locust_stats.csv"))}
    assert int(rows[("sim", "TTFT")]["Request Count"]) == results.per_model["sim"]["TTFT"].count
    assert int(rows[("fail-500", "E2E")]["Failure Count"]) == results.per_model["fail-500"]["E2E"].failures
    assert lines and all(ln.startswith("[loadtest]") for ln in lines)
    assert (out / "results.json").exists() and (out / "report.html").exists()
    assert results.process_count("ITL") == results.metrics["ITL"].count and not results.notes
    assert results.output_tokens == TOKENS * results.per_model["sim"]["E2E"].count


def test_plain_locust_f_with_flat_options(tmp_path):
    with sse_server(ttft_ms=5, itl_ms=2) as url:
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "--model", "sim",
               "-u", "2", "-r", "2", "-t", "3s", "--drain", "1s", "--output-len", "uniform:4-8", "--input-len", "6",
               "--endpoint", "completions", "--out-dir", str(tmp_path), "--csv", str(tmp_path / "locust"),
               "--only-summary", "--loglevel", "WARNING"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = collect_results(tmp_path)
    assert results.plan.duration_s == 3 and results.plan.endpoint == "completions" and results.plan.models == ("sim",)
    assert results.requests.total > 0 and results.requests.failed == 0
    assert all(4 <= r.output_tokens <= 8 for r in read_requests(tmp_path / "requests.jsonl"))
    assert "sim,TTFT" in (tmp_path / "locust_stats.csv").read_text()


def test_unreachable_server_is_a_failure_not_a_crash(tmp_path):
    port = _free_port()  # nothing listens there
    plan = build_plan(models=["sim"], users=2, duration_s=1, drain_s=0.5, output_len=4)
    results = run(f"http://127.0.0.1:{port}", plan, out_dir=tmp_path, workers=0, progress=None)
    assert results.requests.total > 0 and results.requests.failed == results.requests.total
    assert "ConnectionError" in results.failures[0].error
    assert "Traceback" not in (tmp_path / "master.log").read_text()


def test_cli_replays_a_trace(tmp_path):
    from typer.testing import CliRunner

    from loadtest.cli import cli

    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"t_s": 0.2 * i, "input_tokens": 5, "output_tokens": 3 + i % 4}) + "\n"
                             for i in range(10)))
    with sse_server(ttft_ms=5, itl_ms=1) as url:
        res = CliRunner().invoke(cli, ["run", "--host", url, "--model", "sim", "--shape", "trace", "--trace", str(trace),
                                       "--duration", "0", "--drain", "1s", "--users", "4", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "results:" in res.output and "TTFT" in res.output
    records = read_requests(tmp_path / "o" / "requests.jsonl")
    assert sorted(r.i for r in records) == list(range(10))
    assert all(r.output_tokens == 3 + r.i % 4 and r.due_s == pytest.approx(0.2 * r.i) for r in records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
