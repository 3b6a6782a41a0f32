"""One Prometheus view and one trace per request, live: real Ray Serve, two vLLM replicas, real Locust.

One app per ingress mode (direct: HAProxy ──► replicas; router: HAProxy ──► router ──► replicas),
each with two replicas of the tiny dense model, spans exported over OTLP/HTTP to a receiver in
this process, and metrics read from the node's one endpoint: Ray's metrics export port. The
same scrape holds every metric the Grafana dashboard (k8s/grafana-dashboard.json) queries.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from conftest import REPO, free_port, wait_until
from loadtest import build_plan, load_results, read_requests, run
from loadtest.report import PNG_MAGIC
from loadtest.timeline import write_run_report
from cluster.ray_cluster import ensure_ray
from serve_app.app import build_application
from serve_app.schema import parse_config
from serve_app.telemetry.metrics import ENGINE_SIGNAL_METRICS, RAY_PREFIX
from telemetry_helpers.dashboard import dashboard_exprs, label_names, metric_names, queried_metrics
from telemetry_helpers.otlp import otlp_receiver
from telemetry_helpers.scrape import count_by_model, scrape

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "tiny-dense"
_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
TTFT, E2E = "ray_vllm_time_to_first_token_seconds", "ray_vllm_e2e_request_latency_seconds"
KEY = "obs-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Per key and per gate (each replica in direct mode, the router in router mode): Locust's 4 users
# stay under it; the dashboard test's burst of streams goes over it for a real 429.
MAX_CONCURRENT = 6


@pytest.fixture(scope="module", params=["direct", "router"])
def app(request, tmp_path_factory):
    mode = request.param
    tmp = tmp_path_factory.mktemp(mode)
    port, metrics_port = free_port(), free_port()
    with otlp_receiver() as (endpoint, receiver):
        cfg = parse_config({
            "name": f"obs-{mode}",
            "api_keys": [KEY], "key_limits": {"max_concurrent_requests": MAX_CONCURRENT},
            "http": {"port": port, "ingress": "router" if mode == "router" else "auto"},
            "local_ray": {"metrics_export_port": metrics_port},
            "telemetry": {"otlp_endpoint": endpoint, "sampling_ratio": 0.0, "request_log": str(tmp / "requests.jsonl")},
            "models": [{
                "name": MODEL, "source": "tiny:dense", "max_model_len": 512, "placement": {"accelerator": "CPU"},
                # One sequence at a time: 4 users on 2 replicas queue in the engines (the load test's server series).
                "engine_args": {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 1}, "env": _ENV,
                # Two replicas held by the queue-depth policy (a target no tiny run reaches): its decisions are scraped.
                "autoscaling": {"min_replicas": 2, "max_replicas": 3, "target_queue_per_replica": 1000},
            }],
        })
        saved = dict(os.environ)
        # Replica processes export spans every 0.5 s instead of 5 s: the test reads them sooner.
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "500"
        os.environ["FLEETSERVE_API_KEY"] = KEY  # the Locust users' key
        # Ray's processes export metrics every 1 s instead of 10 s: the load test's server series has 1 s points.
        os.environ["RAY_metrics_report_interval_ms"] = "1000"
        try:
            ensure_ray(cfg)
            serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
            serve.run(build_application(cfg), name=cfg.name, route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            plan = build_plan(models=[MODEL], users=4, duration_s=6, drain_s=5, input_len=32, output_len=16,
                              progress_interval_s=5)
            results = run(base, plan, out_dir=tmp / "locust", workers=0, progress=None,
                          metrics=[f"http://127.0.0.1:{metrics_port}/metrics"])
            yield {"mode": mode, "base": base, "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
                   "sent": read_requests(tmp / "locust" / "requests.jsonl"), "results": results,
                   "receiver": receiver, "request_log": tmp / "requests.jsonl"}
        finally:
            serve.shutdown()
            import ray

            ray.shutdown()
            os.environ.clear()
            os.environ.update(saved)


def test_one_scrape_counts_every_request_sent(app):
    sent = app["sent"]
    assert sent and all(r.ok for r in sent), [r.error for r in sent if not r.ok][:3]
    want = {MODEL: float(len(sent))}
    # Ray's agent exports what the replicas reported in their last period: poll until it has them all.
    last: dict = {}

    def counted():
        last["s"] = s = scrape(app["metrics"])
        return count_by_model(s, TTFT) == want and count_by_model(s, E2E) == want and s

    try:
        samples = wait_until(counted, timeout_s=90, what=f"TTFT and E2E counts == {len(sent)} requests sent")
    except pytest.fail.Exception:  # say what the scrape had (one full-suite run saw it time out in router mode)
        s = last.get("s", {})
        pytest.fail(f"{len(sent)} sent; last scrape TTFT {count_by_model(s, TTFT)} E2E {count_by_model(s, E2E)} "
                    f"per replica {[(x.labels.get('ReplicaId'), x.value) for x in s.get(TTFT + '_count', [])]}")
    replicas = {s.labels["ReplicaId"] for s in samples[TTFT + "_count"]}
    assert len(replicas) == 2, replicas  # both replicas' series, one endpoint
    assert {s.labels["layout"] for s in samples[TTFT + "_count"]} == {"tp1-pp1-ep1/mp"}
    for name in ("ray_vllm_inter_token_latency_seconds_count", "ray_vllm_request_queue_time_seconds_count",
                 "ray_vllm_prompt_tokens_total", "ray_vllm_generation_tokens_total"):
        assert name in samples, name
    out_tokens = sum(s.value for s in samples["ray_vllm_generation_tokens_total"])
    assert out_tokens == sum(r.output_tokens for r in sent)
    for name in ENGINE_SIGNAL_METRICS.values():
        got = samples.get(RAY_PREFIX + name, [])
        assert {s.labels["replica"] for s in got} == replicas and {s.labels["model"] for s in got} == {MODEL}, name
    print(f"{app['mode']}: {len(sent)} sent, TTFT/E2E counts {want}, replicas {sorted(replicas)}")


def test_autoscaler_target_and_decisions_are_scraped(app):
    samples = wait_until(lambda: (s := scrape(app["metrics"])) and "ray_fleetserve_autoscaler_decisions_total" in s and s,
                         timeout_s=90, what="the autoscaler's metrics")
    (target,) = [s.value for s in samples["ray_fleetserve_autoscaler_target_replicas"] if s.labels["model"] == MODEL]
    assert target == 2
    assert sum(s.value for s in samples["ray_fleetserve_autoscaler_decisions_total"]) >= 1


def test_the_load_test_saw_the_server_queue_and_replicas_beside_client_ttft(app, tmp_path):
    server = app["results"].server
    assert server is not None and server.scrapes_failed == 0, server and server.errors
    pts = server.models[MODEL].points
    assert max(p.replicas for p in pts) == 2 and {p.target_replicas for p in pts} == {2}
    assert max(p.waiting_requests for p in pts) > 0 and max(p.running_requests for p in pts) > 0
    client = [p.t_s for p in app["results"].timeline]
    assert [p for p in pts if client[0] <= p.t_s <= client[-1]], (client, [p.t_s for p in pts])  # one time base
    run_dir = app["request_log"].parent / "locust"
    assert load_results(run_dir / "results.json").server == server
    png = write_run_report(run_dir, tmp_path)
    assert png.read_bytes().startswith(PNG_MAGIC)
    print(f"{app['mode']}: {len(pts)} server points, waiting max {max(p.waiting_requests for p in pts):g}, "
          f"timeline {png}")


def test_a_sampled_request_is_one_trace_across_processes(app):
    tid, parent = os.urandom(16).hex(), os.urandom(8).hex()
    r = httpx.post(app["base"] + "/v1/chat/completions", timeout=60,
                   headers={**AUTH, "traceparent": f"00-{tid}-{parent}-01"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
    assert r.status_code == 200 and "[DONE]" in r.text
    want = {"replica", "llm_request", "queued", "prefill", "decode"} | ({"router"} if app["mode"] == "router" else set())

    def tree():
        spans = [s for s in app["receiver"].spans if s.trace_id == tid]
        names = {("router" if s.attributes.get("fleetserve.role") == "router" else "replica") if s.name.startswith("POST")
                 else s.name for s in spans}
        return spans if names >= want else None

    spans = wait_until(tree, timeout_s=60, what=f"spans {sorted(want)} of trace {tid}")
    by_id = {s.span_id: s for s in spans}
    fronts = [s for s in spans if s.name.startswith("POST")]
    top = [s for s in fronts if s.parent_id == parent]
    assert len(top) == 1  # the client's span is the parent of exactly the first hop
    replica = next(s for s in fronts if s.attributes["fleetserve.role"] == "replica")
    if app["mode"] == "router":
        assert top[0].attributes["fleetserve.role"] == "router" and by_id[replica.parent_id] is top[0]
        assert top[0].resource["fleetserve.role"] == "router"
    engine = next(s for s in spans if s.name == "llm_request")
    assert engine.parent_id == replica.span_id
    assert replica.attributes["gen_ai.usage.output_tokens"] == 4 and replica.attributes["gen_ai.request.model"] == MODEL
    assert replica.resource["fleetserve.layout"] == "tp1-pp1-ep1/mp"
    # Load-test requests (traceparent without the sampled flag, ratio 0) left no spans.
    sent_ids = {r.trace_id for r in app["sent"]}
    assert sent_ids and not sent_ids & {s.trace_id for s in app["receiver"].spans}


def test_request_log_has_a_line_per_request_joined_by_trace_id(app):
    sent = {r.trace_id: r for r in app["sent"]}
    lines = wait_until(lambda: (p := app["request_log"]).exists() and
                       (ls := [json.loads(x) for x in p.read_text().splitlines()]) and
                       set(sent) <= {x["trace_id"] for x in ls} and ls, timeout_s=30, what="every request's log line")
    for x in lines:
        if x["trace_id"] in sent:
            assert x["status"] == 200 and x["output_tokens"] == sent[x["trace_id"]].output_tokens
    assert len({x["replica"] for x in lines}) == 2
    assert not re.search(r"Bearer|\"messages\"", app["request_log"].read_text())


def _stream(base: str) -> int:
    with httpx.stream("POST", base + "/v1/chat/completions", headers=AUTH, timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": 128,
            "ignore_eos": True, "stream": True}) as r:
        for _ in r.iter_bytes():
            pass
        return r.status_code


def test_every_metric_the_dashboard_queries_is_in_one_scrape(app):
    # The refusal counter exists from the first refusal: over-run the key's concurrency limit on
    # every gate (more streams than MAX_CONCURRENT per replica) for real 429s.
    n = 2 * MAX_CONCURRENT + 4
    queried = queried_metrics(REPO / "k8s" / "grafana-dashboard.json")
    assert len(queried) >= 15, sorted(queried)  # the extraction found the dashboard's metrics, not a few
    # Ray's agent exports a gauge only for the report period it was set in, and the fixture's period
    # is 1 s: an idle engine's gauges (vLLM's queue, Serve's replica health) come and go between
    # scrapes. So the scrapes run while the streams do, and each metric is taken from the latest
    # real scrape that had it (the full suite saw 4 gauges missing from scrapes taken after the load).
    seen: dict = {}

    def scrape_into_seen() -> dict:
        got = scrape(app["metrics"])
        seen.update(got)
        return got

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_stream, app["base"]) for _ in range(n)]
        while not all(f.done() for f in futures):
            scrape_into_seen()
            time.sleep(0.3)
        statuses = [f.result() for f in futures]
    assert 429 in statuses and set(statuses) <= {200, 429}, statuses

    def present():
        got = scrape_into_seen()
        count = sum(s.value for s in got.get("ray_fleetserve_requests_refused_total", []) if s.labels["status"] == "429")
        return queried <= set(seen) and count == statuses.count(429)

    try:
        wait_until(present, timeout_s=60, what="every dashboard metric and each 429 in the scrapes")
    except pytest.fail.Exception:
        pytest.fail(f"missing from every scrape: {sorted(queried - set(seen))}")
    got = seen
    refused = [s for s in got["ray_fleetserve_requests_refused_total"] if s.labels["status"] == "429"]
    assert {s.labels["reason"] for s in refused} == {"key_limit"}
    # Every label the dashboard groups by or matches on is a label of the metric it applies to.
    for expr in dashboard_exprs(json.loads((REPO / "k8s" / "grafana-dashboard.json").read_text())):
        for name in metric_names(expr):
            have = set().union(*(s.labels for s in got[name]))
            assert label_names(expr) <= have, (expr, sorted(have))
    print(f"{app['mode']}: {len(queried)} dashboard metrics in the scrapes under load; {statuses.count(429)} of {n} streams got 429")
