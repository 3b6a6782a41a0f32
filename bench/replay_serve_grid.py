"""Serve's default policy on a grid of its four knobs: a check that tuning did not under-tune the baseline.

    python bench/replay_serve_grid.py          # ~1.5 min: 189 replays of replay_tune.py's mixed trace

Same trace, fleet and SLO as bench/replay_tune.py (`--trace`); prints the cheapest grid point that
meets the SLO and the twelve cheapest points overall. TPE's best in replay_tune.py should be at
least as cheap as the grid's; if the grid wins, the search, not the policy, lost.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replay_tune import COLD_START_S, TRACES  # noqa: E402

GRID = {"min_replicas": (1, 2, 3), "serve_target_ongoing_requests": (4, 6, 8, 12, 20, 32, 64),
        "upscale_stabilization_s": (0, 15, 45), "downscale_stabilization_s": (5, 30, 300)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", choices=sorted(TRACES), default="mixed")
    ap.add_argument("--seed", type=int, default=0, help="Router seed.")
    args = ap.parse_args(argv)

    from serve_app.autoscaling.compare import Slo, summarize
    from serve_app.autoscaling.des import ReplaySetup, run_replay
    from serve_app.autoscaling.latency import from_roofline
    from serve_app.autoscaling.runners import runner_for
    from serve_app.autoscaling.traces import generate
    from serve_app.schema import AutoscalingConfig

    kw = dict(TRACES[args.trace])
    trace = generate(kw.pop("kind"), **kw)
    lat = from_roofline("mixtral-8x7b", "A100-80GB", tp=4, cold_start_s=COLD_START_S)
    setup = ReplaySetup(latency=lat, max_ongoing_requests=64, seed=args.seed)
    slo = Slo(1000.0, 0.95)
    rows, t0 = [], time.time()
    for values in itertools.product(*GRID.values()):
        knobs = dict(zip(GRID, values))
        cfg = AutoscalingConfig(policy="serve_default", max_replicas=16, metrics_push_interval_s=1.0,
                                metrics_look_back_s=5.0, **knobs)
        s = summarize(run_replay(trace, runner_for("grid", cfg), setup), slo)
        rows.append((s["gpu_hours"], s["slo_attainment"], bool(s["slo_met"]), knobs))
    feasible = [r for r in rows if r[2]]
    print(f"{len(rows)} grid points in {time.time() - t0:.0f} s; {len(feasible)} met {slo}")
    if feasible:
        g, a, _, k = min(feasible, key=lambda r: r[0])
        print(f"cheapest that met it: {g:.2f} GPU-h ({a:.2%}) at {k}")
    for g, a, ok, k in sorted(rows, key=lambda r: r[0])[:12]:
        print(f"  {g:6.2f} GPU-h {a:.2%} {'ok' if ok else 'MISS'} {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
