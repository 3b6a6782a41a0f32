"""Distributed runs (a locust master and 2 workers on loopback) and the open-loop Poisson rate."""

from __future__ import annotations

import csv

import pytest
from loadtest_helpers.server import sse_server

from loadtest import build_plan, poisson_times, read_requests, run


pytestmark = pytest.mark.timeout(240)


def _assert_master_totals_equal_workers_sum(results, out):
    assert {p.proc for p in results.processes} == {"worker-0", "worker-1"}
    for metric, stats in results.metrics.items():
        assert stats.count == results.process_count(metric), (metric, stats.count, results.process_count(metric))
    for p in results.processes:  # both workers carried load
        assert sum(e.count for e in p.events if e.metric == "E2E") > 0
    rows = {r["Name"]: r for r in csv.DictReader(open(out / "locust_stats.csv"))}
    assert int(rows["E2E"]["Request Count"]) == results.process_count("E2E")
    assert len(read_requests(out / "requests.jsonl")) == results.requests.total
    assert not results.notes, results.notes


def test_two_workers_master_totals_equal_the_workers_sum(tmp_path):
    with sse_server(ttft_ms=5, itl_ms=2) as url:
        plan = build_plan(models=["sim"], users=6, spawn_rate=6, duration_s=5, drain_s=3.5, input_len=8, output_len=8)
        results = run(url, plan, out_dir=tmp_path, workers=2, progress=None)
    assert results.workers == 2 and results.requests.total > 50 and results.requests.failed == 0
    _assert_master_totals_equal_workers_sum(results, tmp_path)


@pytest.mark.slow
def test_poisson_shape_delivers_its_rate_within_5_percent_over_a_minute(tmp_path):
    rate, duration = 20.0, 60.0
    with sse_server(ttft_ms=0, itl_ms=0) as url:
        plan = build_plan(models=["sim"], shape="poisson", rate_rps=rate, users=16, duration_s=duration, drain_s=3.5,
                          input_len=8, output_len=4, seed=0, progress_interval_s=15)
        results = run(url, plan, out_dir=tmp_path, workers=2, progress=print)
    planned = next(i for i, t in enumerate(poisson_times(rate, 0)) if t >= duration)  # arrivals before 60 s
    claimed = sum(p.arrivals_claimed or 0 for p in results.processes)
    delivered_rps = results.sent_rps
    print(f"Poisson: configured {rate} req/s, delivered {delivered_rps:.3f} req/s "
          f"({(delivered_rps - rate) / rate:+.2%}), {planned} scheduled, {results.requests.total} done, "
          f"LAG p99 {results.metrics['LAG'].p99} ms")
    assert claimed == planned == results.requests.total  # every arrival sent, once
    assert abs(delivered_rps - rate) / rate < 0.05
    assert results.metrics["LAG"].p50 < 10  # sent on schedule (p99 is printed: startup and machine noise)
    _assert_master_totals_equal_workers_sum(results, tmp_path)
