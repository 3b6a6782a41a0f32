"""Server series of a load test, fast: the scraper and parser on Prometheus text, the timeline plot, no Ray.

The text is either a real scrape of Ray's metrics export port (tests/data/ray_metrics_scrape.txt.gz,
875 kB of text: captured from a live app with two vLLM replicas of the tiny model under load), or produced by
prometheus_client with the same names and labels (for rounds the test wants to choose).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from conftest import wait_until
from loadtest_helpers.metrics_server import metrics_server
from loadtest import RunResults, build_plan, load_results
from loadtest.results import RequestRecord, TimelinePoint, build_results
from loadtest.report import PNG_MAGIC
from loadtest.scraper import Scraper
from loadtest.server_series import Round, build_server_series, read_round
from loadtest.timeline import TIMELINE_PNG, write_run_report
from loadtest.runner import with_server_series, write_results
from serve_app.telemetry.metrics import AUTOSCALER_GAUGES, ENGINE_SIGNAL_METRICS, RAY_PREFIX

REAL_SCRAPE = gzip.decompress((Path(__file__).parent / "data" / "ray_metrics_scrape.txt.gz").read_bytes()).decode()


def scrape_text(replicas: dict[str, dict[str, float]], *, model: str | tuple[str, ...] = "m",
                target: float | None = None) -> str:
    """Prometheus text as Ray's agent exports it: one engine-signal gauge per signal, a series per (model, replica)."""
    models = (model,) if isinstance(model, str) else model
    reg = CollectorRegistry()
    for signal, name in ENGINE_SIGNAL_METRICS.items():
        g = Gauge(RAY_PREFIX + name, signal, ("model", "replica", "layout", "Component"), registry=reg)
        for m in models:
            for rid, values in replicas.items():
                g.labels(m, rid, "tp1-pp1-ep1/mp", "ServeReplica").set(values.get(signal, 0.0))
    if target is not None:
        t = Gauge(RAY_PREFIX + AUTOSCALER_GAUGES["target_replicas"], "target", ("model",), registry=reg)
        for m in models:
            t.labels(m).set(target)
    return generate_latest(reg).decode()


def test_a_real_scrape_reads_queue_running_kv_replicas_and_target():
    got = read_round([REAL_SCRAPE])
    r = got["tiny-dense"]
    assert len(r.replicas) == 2  # two vLLM replicas, one endpoint
    assert r.target_replicas == 2
    # Captured under load: 6 users on two replicas running one sequence each.
    assert (r.waiting_requests, r.running_requests) == (4, 2)
    assert len(r.kv) == 2 and all(0 <= v <= 1 for v in r.kv)


def test_rounds_become_series_and_scale_events_on_the_test_start_time_base():
    one = {"a": {"waiting_requests": 3, "running_requests": 1, "kv_usage": 0.5}}
    two = {**one, "b": {"waiting_requests": 1, "running_requests": 2, "kv_usage": 0.25}}
    rounds = [Round(t_unix_s=99.0, readings=read_round([scrape_text(one, target=1)])),
              Round(t_unix_s=100.0, readings=read_round([scrape_text(one, target=2)])),
              Round(t_unix_s=101.0, readings=read_round([scrape_text(two, target=2)]))]
    s = build_server_series(rounds, t0_unix_s=100.0, endpoints=["http://x/metrics"], interval_s=1.0)
    pts = s.models["m"].points
    assert [p.t_s for p in pts] == [-1.0, 0.0, 1.0]  # scraping starts before the test start
    assert [p.replicas for p in pts] == [1, 1, 2] and [p.target_replicas for p in pts] == [1, 2, 2]
    assert (pts[2].waiting_requests, pts[2].running_requests) == (4, 3)  # sums over replicas
    assert (pts[2].kv_usage_max, pts[2].kv_usage_mean) == (0.5, 0.375)
    assert [(e.t_s, e.what, e.before, e.after) for e in s.models["m"].scale_events] == [
        (0.0, "target_replicas", 1, 2), (1.0, "replicas", 1, 2)]


def test_endpoints_of_one_round_are_merged_and_a_partial_round_is_left_out():
    texts = {"http://n1/metrics": scrape_text({"a": {"waiting_requests": 2}}),
             "http://n2/metrics": scrape_text({"b": {"waiting_requests": 5}})}
    calls = {"n": 0}

    def fetch(url):
        calls["n"] += 1
        if calls["n"] == 4:  # second round, second node: down
            raise ConnectionError("refused")
        return texts[url]

    sc = Scraper(list(texts), max_s=10, fetch=fetch, clock=lambda: 0.0)
    rounds = [sc.scrape_once(), sc.scrape_once()]
    assert rounds[0].readings["m"].waiting_requests == 7 and len(rounds[0].readings["m"].replicas) == 2
    assert rounds[1].errors == {"http://n2/metrics": "ConnectionError: refused"} and not rounds[1].readings
    s = build_server_series(rounds, t0_unix_s=0.0, endpoints=list(texts), interval_s=1.0)
    assert (s.rounds, s.scrapes_failed, len(s.models["m"].points)) == (2, 1, 1)


def test_a_failed_scrape_is_counted_never_raised_and_the_thread_stops_by_itself():
    answers = iter(["not prometheus {{{", scrape_text({"a": {}})])

    def fetch(url):
        try:
            return next(answers)
        except StopIteration:
            raise TimeoutError("scrape timed out") from None

    sc = Scraper(["http://127.0.0.1:9/metrics"], interval_s=0.05, max_s=0.5, fetch=fetch)
    sc.start()
    wait_until(lambda: not sc._thread.is_alive(), timeout_s=10, what="the scraper to stop at max_s")
    s = sc.series(t0_unix_s=0.0)
    assert s.rounds >= 3 and s.scrapes_failed == s.rounds - 1
    assert s.errors[0].startswith("http://127.0.0.1:9/metrics: ValueError") and "TimeoutError" in s.errors[1]
    assert len(s.models["m"].points) == 1


def test_a_bad_metrics_url_is_refused_before_the_run():
    with pytest.raises(Exception, match=r"--metrics '127.0.0.1:8080'.*http://127.0.0.1:<local_ray"):
        Scraper(["127.0.0.1:8080"], max_s=1)


def _results(tmp_path: Path) -> RunResults:
    recs = [RequestRecord(i=i, proc="local", model="m", start_unix_s=10.0 + i * 0.5, input_tokens=8, max_tokens=4,
                          output_tokens=4, ttft_ms=100.0 + 50 * i, tpot_ms=10.0, e2e_ms=400.0, ok=True)
            for i in range(8)]
    (tmp_path / "requests.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in recs))
    return build_results(stats={"t0_unix_s": 10.0, "end_unix_s": 15.0, "entries": []}, processes=[], records=recs,
                         plan=build_plan(models=["m"], users=2, duration_s=4), host="http://x", workers=0)


def test_results_without_server_series_load_and_their_plot_says_not_measured(tmp_path):
    r = _results(tmp_path)
    old = json.loads(r.model_dump_json())
    del old["server"]  # a results.json written before server series existed
    for p in old["timeline"]:
        del p["tpot_p50_ms"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert load_results(tmp_path / "results.json").server is None
    png = write_run_report(tmp_path)
    assert png.name == TIMELINE_PNG and png.read_bytes().startswith(PNG_MAGIC)
    assert isinstance(r.timeline[0], TimelinePoint) and r.timeline[0].tpot_p50_ms == 10.0


def test_results_carry_server_series_and_notes_and_the_report_plots_them(tmp_path):
    r = _results(tmp_path)
    rounds = [Round(t_unix_s=10.0 + t, readings=read_round([scrape_text(
        {f"r{k}": {"waiting_requests": t % 3, "running_requests": 1, "kv_usage": 0.1 * t} for k in range(1 + t // 3)},
        target=1 + t // 3)])) for t in range(6)]
    rounds.append(Round(t_unix_s=16.0, errors={"http://x/metrics": "HTTP 503"}))
    server = build_server_series(rounds, t0_unix_s=10.0, endpoints=["http://x/metrics"], interval_s=1.0)
    r = with_server_series(r, server)
    assert "1 of 7 metric scrapes failed" in r.notes[-1] and "HTTP 503" in r.notes[-1]
    write_results(r, tmp_path)
    again = load_results(tmp_path / "results.json")
    assert again.server == server and len(again.server.models["m"].scale_events) == 2
    assert write_run_report(tmp_path).read_bytes().startswith(PNG_MAGIC)


def test_a_model_never_seen_in_the_scrapes_is_noted():
    r = with_server_series(_results_plain(), build_server_series([], t0_unix_s=0, endpoints=["http://x/m"], interval_s=1))
    assert any("no server series for m" in n for n in r.notes)


def _results_plain() -> RunResults:
    return build_results(stats={"t0_unix_s": 0.0, "end_unix_s": 1.0, "entries": []}, processes=[], records=[],
                         plan=build_plan(models=["m"], users=1, duration_s=1), host="http://x", workers=0)


def test_scraping_a_real_http_endpoint():
    """The default fetch (httpx) against a local HTTP server serving the real scrape."""
    with metrics_server(REAL_SCRAPE) as base:
        assert len(Scraper([base + "/metrics"], max_s=5).scrape_once().readings["tiny-dense"].replicas) == 2
        assert Scraper([base + "/nope"], max_s=5).scrape_once().errors == {base + "/nope": "HTTP 404"}


def test_report_command_on_a_run_dir_writes_its_timeline(tmp_path):
    from typer.testing import CliRunner

    from loadtest.cli import cli

    write_results(_results(tmp_path), tmp_path)
    res = CliRunner().invoke(cli, ["report", str(tmp_path), "--ttft-slo-ms", "200"])
    assert res.exit_code == 0, res.output
    assert "server: not scraped" in res.output and (tmp_path / TIMELINE_PNG).read_bytes().startswith(PNG_MAGIC)


def test_a_sweep_report_has_one_timeline_per_strategy_that_ran_a_step(tmp_path):
    from test_loadtest_report import _sweep

    from loadtest import write_report

    sweep = _sweep()
    tp1 = sweep.strategies[0]
    for i, st in enumerate(tp1.steps):  # tp1's steps have run dirs with results.json; tp2's and pp2's have none
        d = tmp_path / st.run_dir
        d.mkdir(parents=True)
        rounds = [Round(t_unix_s=10.0 + t, readings=read_round([scrape_text({"a": {"waiting_requests": i + t}},
                                                                            model="tiny-dense", target=1)]))
                  for t in range(4)]
        write_results(with_server_series(_results(d), build_server_series(
            rounds, t0_unix_s=10.0, endpoints=["http://x/metrics"], interval_s=1.0)), d)
    files = write_report(sweep, tmp_path)
    assert [p.name for p in files.timelines] == ["timeline-tp1.png"]
    assert files.timelines[0].read_bytes().startswith(PNG_MAGIC)
    assert files.html.read_text().count('src="data:image/png;base64,') == 4
