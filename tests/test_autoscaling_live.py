"""The queue-depth autoscaler on live Ray Serve: a Locust burst, scale-to-zero, and real vLLM's backlog.

One local Ray (8 logical CPUs) and one Serve instance for the module; the apps deployed here are
deleted by the module's teardown with the rest of Serve.

    Locust (subprocess, loadtest.run) ──HTTP──► router ──► model-sim-burst (SIMULATOR, 1..4 replicas)
    replicas ──record_autoscaling_stats──► controller ──► QueueDepthPolicy ──► audit store actor
    test ──serve.status() every 0.2 s──► observed replica counts
    test ──GET /-/autoscaler/{model}──► the decisions, checked against what Serve did

The simulator gives each replica a real, small capacity (2 sequences, ~0.4 s a request), so a
dozen closed-loop users build an engine backlog on one replica and fit on four.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx
import pytest
import ray
from ray import serve

from conftest import free_port, wait_until
from loadtest import build_plan, run
from serve_app.app import build_application
from serve_app.config import parse_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

BURST, ZERO, REAL = "sim-burst", "sim-zero", "tiny-dense"
MAX_REPLICAS = 4
POLICY_INTERVAL_S = 0.5
UP_WINDOW_S, DOWN_WINDOW_S = 1.0, 5.0
IDLE_TIMEOUT_S = 4.0
# Fast metrics: Ray 2.60 pushes replica and handle metrics every `metrics_interval_s` (the adapter
# sets it from metrics_push_interval_s); the RAY_SERVE_*_PUSH_INTERVAL_S env vars are not read.
_FAST = {"policy_interval_s": POLICY_INTERVAL_S, "metrics_push_interval_s": 0.5, "metrics_look_back_s": 1.5}
# ~0.4 s per 8-token request at a full batch of 2: a replica absorbs ~5 requests/s.
_SIM = {"startup_s": 0.5, "max_num_seqs": 2, "decode_step_base_s": 0.05, "decode_step_per_seq_s": 0.0,
        "prefill_s_per_token": 0.0}


def _sim_model(name: str, autoscaling: dict) -> dict:
    return {"name": name, "source": "tiny:dense", "engine": "sim", "sim": _SIM, "max_model_len": 512,
            "placement": {"accelerator": "CPU", "cpus_per_worker": 0.5}, "autoscaling": {**_FAST, **autoscaling}}


SIM_APP = {
    "name": "sim",
    "models": [
        _sim_model(BURST, {
            "min_replicas": 1, "max_replicas": MAX_REPLICAS, "target_queue_per_replica": 1,
            "upscale_stabilization_s": UP_WINDOW_S, "upscale_cooldown_s": 1, "panic_threshold": 50,
            "downscale_stabilization_s": DOWN_WINDOW_S, "downscale_cooldown_s": 1, "max_step_down": 2,
        }),
        _sim_model(ZERO, {
            "min_replicas": 0, "max_replicas": 1, "idle_timeout_s": IDLE_TIMEOUT_S,
            "upscale_stabilization_s": 0, "downscale_stabilization_s": 1, "downscale_cooldown_s": 0,
        }),
    ],
}


@pytest.fixture(scope="module")
def serve_url():
    port = free_port()
    # A Ray of our own (address="local"), even when another one on this machine is the "current"
    # cluster; logical CPUs: one per replica bundle, plus room.
    ray.init(address="local", num_cpus=8, namespace="serve", include_dashboard=False)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def sim_app(serve_url):
    cfg = parse_config({**SIM_APP, "http": {"port": int(serve_url.rsplit(":", 1)[1])}})
    serve.run(build_application(cfg), name="sim", route_prefix="/")
    yield serve_url
    if "sim" in serve.status().applications:  # the vLLM test may have deleted it already
        serve.delete("sim")


def _replicas(app: str, model: str) -> tuple[int, int]:
    """Return (running, starting) replicas of `model`'s deployment in `app`, per serve.status()."""
    dep = serve.status().applications[app].deployments[f"model-{model}"]
    states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
    return states.get("RUNNING", 0), states.get("STARTING", 0)


def _decisions(url: str, model: str) -> list[dict]:
    r = httpx.get(f"{url}/-/autoscaler/{model}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["decisions"]


def _wish(rec: dict, lo: int, hi: int) -> int:
    """The bounded count a decision wished for (what the stabilization windows keep)."""
    return min(max(rec["raw_desired"], lo), hi)


def test_locust_burst_scales_up_within_the_window_and_back_to_min(sim_app, tmp_path):
    url = sim_app
    wait_until(lambda: _replicas("sim", BURST) == (1, 0), timeout_s=60, what="one running sim-burst replica")
    plan = build_plan(models=[BURST], shape="spike", users=1, spike_users=12, spike_at_s=3, spike_s=14,
                      duration_s=20, drain_s=2, input_len=16, output_len=8, progress_interval_s=5)
    results: dict = {}
    locust = threading.Thread(target=lambda: results.update(r=run(url, plan, out_dir=tmp_path / "burst", progress=None)))
    t0 = time.time()
    locust.start()
    seen: list[tuple[float, int, int]] = []  # (epoch s, running, starting)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running, starting = _replicas("sim", BURST)
        seen.append((time.time(), running, starting))
        if not locust.is_alive() and (running, starting) == (1, 0) and max(s[1] for s in seen) > 1:
            break
        time.sleep(0.2)
    locust.join(timeout=60)
    run_results = results["r"]

    peak = max(s[1] for s in seen)
    assert peak > 1, f"never more than one running replica: {seen[-10:]}"
    assert (seen[-1][1], seen[-1][2]) == (1, 0), f"did not return to min_replicas=1: {seen[-10:]}"
    # How many requests fit in the burst depends on the machine; that it scaled is asserted above.
    assert run_results.requests.failed == 0 and run_results.requests.ok >= 10

    recs = [r for r in _decisions(url, BURST) if r["time_s"] >= t0 - 1]
    first_multi = next(t for t, r, _ in seen if r > 1)
    print(f"\nburst (spike from +3 s to +17 s after Locust starts): first wish >1 at "
          f"+{next(r['time_s'] for r in recs if r['raw_desired'] > 1) - t0:.1f} s, first scale-up decision at "
          f"+{next(r['time_s'] for r in recs if r['direction'] == 'up') - t0:.1f} s, >1 replica running at "
          f"+{first_multi - t0:.1f} s, peak {peak}, last >1 at +{next(t for t, r, _ in reversed(seen) if r > 1) - t0:.1f} s; "
          f"TTFT p50/p95 {run_results.metrics['TTFT'].p50}/{run_results.metrics['TTFT'].p95} ms, "
          f"{run_results.requests.ok} requests")
    # The trail is one chain: each decision starts from the target the previous one left.
    assert all(b["previous_replicas"] == a["target_replicas"] for a, b in zip(recs, recs[1:]))
    ups = [r for r in recs if r["direction"] == "up"]
    downs = [r for r in recs if r["direction"] == "down"]
    assert ups and downs, [(r["previous_replicas"], r["target_replicas"]) for r in recs]
    # Up: the engines' backlog asked for more, the wish waited out the upscale window, then moved.
    first_up = ups[0]
    assert first_up["previous_replicas"] == 1 and first_up["target_replicas"] > 1
    assert first_up["inputs"]["waiting_requests"] > 0 and first_up["backlog"] > 0
    assert first_up["raw_desired"] >= first_up["target_replicas"] and first_up["mode"] == "normal"
    first_wish = next(r for r in recs if _wish(r, 1, MAX_REPLICAS) > 1)
    held = [r for r in recs if first_wish["time_s"] <= r["time_s"] < first_up["time_s"]]
    assert held and all(any(c["name"] == "upscale_stabilization" for c in r["clamps"]) for r in held), held
    # The window was honoured (no scale-up before it); how long after depends on the controller's
    # cadence on a loaded machine, which the clamps above already explain, so no upper bound here.
    assert first_up["time_s"] - first_wish["time_s"] >= UP_WINDOW_S - POLICY_INTERVAL_S
    # Serve ran exactly what the policy asked for at the peak (no more, no fewer).
    assert peak == max(r["target_replicas"] for r in recs)
    # Down: only once every wish of the last downscale window was lower, step by step to min.
    for d in downs:
        wanted_more = [r["time_s"] for r in recs
                       if r["time_s"] < d["time_s"] and _wish(r, 1, MAX_REPLICAS) > d["target_replicas"]]
        assert not wanted_more or d["time_s"] - max(wanted_more) >= DOWN_WINDOW_S - POLICY_INTERVAL_S, d
        assert d["previous_replicas"] - d["target_replicas"] <= 2  # max_step_down
        assert d["inputs"]["waiting_requests"] == 0 and d["inputs"]["queued_requests"] == 0
    assert downs[-1]["target_replicas"] == 1
    # Between the downs, the trail says why it waited (window or cooldown).
    waited = {c["name"] for r in recs if r["time_s"] > ups[-1]["time_s"] for c in r["clamps"]}
    assert "downscale_stabilization" in waited, waited

    # Fidelity (issue 13): the same requests, replayed offline with the same config, the start-ups
    # this run measured and the HTTP path's cost measured on its unloaded requests, track the live
    # replica count within one for most of the run and its TTFT p95 within 25 %. The p95 is
    # queueing on the replicas (seconds here), which the replay models; BENCHMARKS.md "Replay"
    # records the runs (-29 % before the simulator kept its step clock, -15 % after).
    from serve_app.autoscaling.compare import percentile
    from serve_app.autoscaling.des import ReplaySetup, run_replay
    from serve_app.autoscaling.fidelity import agreement, measured_startups, unloaded_overhead_s
    from serve_app.autoscaling.latency import from_sim
    from serve_app.autoscaling.runners import runner_for
    from serve_app.autoscaling.traces import read_trace

    model = parse_config(SIM_APP).model(BURST)
    log = tmp_path / "burst" / "requests.jsonl"
    sent = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    startups = measured_startups([(t, r + st, r) for t, r, st in seen])
    # Kept beside requests.jsonl so a miss can be replayed offline (bench/replay_fidelity.py --replay-only).
    (tmp_path / "burst" / "live_replicas.json").write_text(json.dumps({"started_unix_s": run_results.started_unix_s, "seen": seen}))
    lat = from_sim(model.sim)
    setup = ReplaySetup(latency=lat, max_ongoing_requests=model.max_ongoing_requests,
                        cold_start_samples_s=tuple(startups), ingress_s=unloaded_overhead_s(sent, lat))
    replayed = run_replay(read_trace(log), runner_for("replay", model.autoscaling), setup)
    t_live = run_results.started_unix_s
    ag = agreement([(t - t_live, r) for t, r, _ in seen], replayed,
                   offset_s=min(x["start_unix_s"] for x in sent) - t_live,
                   until_s=max(x["start_unix_s"] + x["e2e_ms"] / 1e3 for x in sent) - t_live)
    p95 = percentile(sorted(x for x in replayed.ttft_s if x == x), 95) * 1e3
    live_p95 = run_results.metrics["TTFT"].p95
    print(f"replay: replicas within one of live for {ag.within_one:.0%} of {ag.samples} samples (exact {ag.exact:.0%}), "
          f"peak {ag.live_peak} live / {ag.replay_peak} replay; TTFT p95 {run_results.metrics['TTFT'].p95} ms live / "
          f"{p95:.0f} ms replay ({p95 / live_p95 - 1:+.0%}); start-ups {startups}; HTTP path {setup.ingress_s * 1e3:.0f} ms")
    assert replayed.finished == len(sent) and ag.samples > 10
    assert ag.within_one >= 0.8, ag.pairs
    assert abs(p95 / live_p95 - 1) <= 0.25, f"TTFT p95 {live_p95} ms live, {p95:.0f} ms replayed"


def test_scale_to_zero_then_the_first_request_wakes_it(sim_app):
    url = sim_app
    wait_until(lambda: _replicas("sim", ZERO) == (0, 0), timeout_s=60, interval_s=0.3,
               what=f"{ZERO} to scale to zero after idle_timeout_s={IDLE_TIMEOUT_S:g}")
    recs = _decisions(url, ZERO)
    to_zero = next(r for r in recs if r["target_replicas"] == 0 and r["direction"] == "down")
    earlier = [r for r in recs if r["time_s"] < to_zero["time_s"]]
    assert any(c["name"] == "idle_timeout" for r in earlier for c in r["clamps"]), earlier[-3:]
    assert to_zero["inputs"]["running_requests"] == 0 and to_zero["raw_desired"] == 0

    t0 = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": ZERO, "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 4})
    woke_s = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    assert r.headers["x-fleetserve-engine"] == "simulator"
    assert _replicas("sim", ZERO)[0] == 1  # before idle_timeout_s takes it away again
    print(f"\nwake-up from zero: first request answered in {woke_s:.1f} s")
    # The policy resumes once the replica runs: it sees one replica and keeps it while busy or young.
    wait_until(lambda: any(d["time_s"] > to_zero["time_s"] and d["inputs"]["current_replicas"] == 1
                           for d in _decisions(url, ZERO)), timeout_s=20, what="a decision after the wake-up")


# --- real vLLM: the engine's own waiting queue reaches the policy ---------------------------

_VLLM_APP = {
    "name": "vllm",
    "models": [{
        "name": REAL, "source": "tiny:dense", "max_model_len": 512,
        "engine_args": {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 2},
        "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"},
        "placement": {"accelerator": "CPU"},
        "autoscaling": {**_FAST, "min_replicas": 1, "max_replicas": 2, "target_queue_per_replica": 1,
                        "upscale_stabilization_s": 1, "downscale_stabilization_s": 300},
    }],
}


def test_real_vllm_backlog_reaches_the_policy_and_scales_up(serve_url):
    url = serve_url
    if "sim" in serve.status().applications:  # one app at route "/" at a time
        serve.delete("sim")
    cfg = parse_config({**_VLLM_APP, "http": {"port": int(url.rsplit(":", 1)[1])}})
    serve.run(build_application(cfg), name="vllm", route_prefix="/")
    stop = threading.Event()

    def stream_forever() -> int:
        done = 0
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                with c.stream("POST", f"{url}/v1/completions", json={
                        "model": REAL, "prompt": "def main(", "max_tokens": 200, "ignore_eos": True,
                        "stream": True}) as resp:
                    assert resp.status_code == 200
                    for _ in resp.iter_lines():
                        pass
                done += 1
        return done

    pool = concurrent.futures.ThreadPoolExecutor(6)
    try:
        t0 = time.time()
        futures = [pool.submit(stream_forever) for _ in range(6)]  # 6 streams, 2 slots: ~4 waiting

        def scaled_on_backlog():
            for f in futures:
                if f.done():
                    f.result()  # a failed stream fails the test here
            return next((r for r in _decisions(url, REAL) if r["time_s"] >= t0 and r["target_replicas"] == 2
                         and r["inputs"]["waiting_requests"] > 0), None)

        rec = wait_until(scaled_on_backlog, timeout_s=90, interval_s=0.5,
                         what="a decision that scales tiny-dense to 2 on vLLM's waiting queue")
    finally:
        stop.set()
        pool.shutdown(wait=True)
    done = sum(f.result() for f in futures)
    assert rec["previous_replicas"] == 1 and rec["direction"] == "up"
    # max_ongoing_requests lets all in, so the backlog is vLLM's own. Serve's handle-queued figure is
    # a look-back average and may catch a request between its stream ending and the next one being
    # assigned (CI saw 0.21), so it is compared with the engine's queue rather than held at 0.
    assert rec["inputs"]["queued_requests"] < min(1, rec["inputs"]["waiting_requests"]), rec["inputs"]
    assert rec["inputs"]["running_requests"] <= 2  # max_num_seqs
    print(f"\nvLLM: scaled 1->2 {rec['time_s'] - t0:.1f} s after the load started; inputs {rec['inputs']}, "
          f"queue_need {rec['queue_need']}, clamps {rec['clamps']}; {done} requests done")
    running, starting = _replicas("vllm", REAL)
    assert running + starting == 2  # Serve carries the decision out (the second replica may still start)
