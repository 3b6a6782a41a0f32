"""What tracing costs on the shipped path: fleetserve with tracing off vs telemetry.sampling_ratio 0, 0.01, 1.0.

    .venv/bin/python -m bench.tracing_cost --levels 32 --rounds 4 --duration 8 --out runs/tracing-cost

Every variant is the `fleetserve` stack of bench.serving_overhead (serve_app.launch.deploy of a
one-model config on the tiny dense model: HAProxy on the config's port, direct ingress into
the replica), differing only in the config's `telemetry` block:

    off     no telemetry block: no tracer provider, vLLM's tracing off
    off-b   the same again, a second stack: the A/A pair whose difference is the run's noise
    0.01 …  telemetry: {otlp_endpoint: <a receiver of ours>, sampling_ratio: R}
            (replica's SDK provider + vLLM's own request tracing, batched OTLP/HTTP export)
    --without NAME (issue 16 item 2, tracing off): the shipped stack with one piece of the replica's
            per-request work off, each alone (WITHOUT below: a public setting, or bench._experiments)

    one OtlpSink per variant (bench._otlp_sink, threads of this process) ◄── spans
    start every variant at once ──► first chat completion each ──► warm-up each
      ──► per round: per level: each variant once (order rotated per round), Locust, CPU by role
      ──► stop all ──► report: tok/s and TTFT p50 per variant, the per-round ratios to off,
          the A/A pair's ratio as the noise band, CPU per 1,000 output tokens, spans received

The variants run side by side so a round measures them minutes apart, not a restart apart:
the ones not being measured sit idle (their engines block on an empty queue), costing each
measured run the same background. The Locust user's traceparent has the sampled flag off, so
the server's ratio decides. Writes results.json and report.md to --out; exits 1 when a
variant failed or a run was refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import _procs
from bench._load import locust_run
from bench._measure import cpu_by_role
from bench._otlp_sink import OtlpSink
from bench._stacks import REPO, EngineSettings, StackSpec, build_stack
from bench._tracing_report import BASE, CONTROL, render_tracing_report
from bench.serving_overhead import _machine, _versions, wait_ready

__all__ = ["main", "parse_args", "variant_telemetry"]


# --without NAME: (label, bench._experiments names, the config's telemetry block)
WITHOUT = {
    "access-log": ("without Serve's access log", ("no-access-log",), None),
    "engine-metrics": ("without vLLM's metrics via Ray", (), {"engine_metrics": False}),
}


def _log(msg: str) -> None:
    print(f"[tracing-cost {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def variant_telemetry(ratio: float | None, endpoint: str) -> dict | None:
    """The config's telemetry block of one variant (None: tracing off, no block at all)."""
    return None if ratio is None else {"otlp_endpoint": endpoint, "otlp_protocol": "http/protobuf",
                                       "sampling_ratio": ratio}


def _label(ratio: float | None) -> str:
    return "tracing off" if ratio is None else f"sampling {ratio:g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0,0.01,1", help="telemetry.sampling_ratio of the traced variants (tracing off always runs).")
    ap.add_argument("--levels", default="32", help="Concurrency levels (closed-loop users).")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="Leave out the second tracing-off stack (the A/A pair that sets the noise band).")
    ap.add_argument("--without", default="", help=f"Comma-separated replica pieces to measure off, each alone: {', '.join(WITHOUT)}.")
    ap.add_argument("--rounds", type=int, default=4, help="Rounds; each measures every variant once per level.")
    ap.add_argument("--duration", type=float, default=10.0, help="Seconds of load per run.")
    ap.add_argument("--warmup", type=float, default=5.0, help="Seconds of warm-up load per variant (not reported).")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--out", default="runs/tracing-cost", help="Output dir (results.json, report.md, logs).")
    args = ap.parse_args(argv)
    try:
        args.ratios = [float(x) for x in args.ratios.split(",") if x.strip()]
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--ratios {args.ratios!r} / --levels {args.levels!r}: use comma-separated numbers, e.g. 0,0.01,1 and 1,32")
    args.without = [w.strip() for w in args.without.split(",") if w.strip()]
    if unknown := [w for w in args.without if w not in WITHOUT]:
        ap.error(f"--without {','.join(unknown)}: unknown; use some of {', '.join(WITHOUT)}")
    if any(not 0.0 <= r <= 1.0 for r in args.ratios) or not args.levels or min(args.levels) < 1 or args.rounds < 1:
        ap.error("--ratios must lie in [0, 1], --levels be integers >= 1 and --rounds >= 1")
    return args


def _start_all(specs: dict[str, StackSpec], settings: EngineSettings, out: Path) -> dict[str, tuple]:
    """Start every variant at once, then wait for each one's first completion; (tree, url) per variant."""
    trees = {k: _procs.start(s.key, s.argv, env=s.env, log_path=out / k / "server.log", cwd=str(REPO))
             for k, s in specs.items()}
    up = {}
    try:
        for k, tree in trees.items():
            url, startup_s = wait_ready(specs[k], tree, settings.served_name)
            _log(f"{specs[k].label}: first chat completion {startup_s:.1f} s after start (all starting at once), at {url}")
            up[k] = (tree, url)
    except BaseException:
        for tree in trees.values():
            _procs.stop(tree)
        raise
    return up


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a variant failed or a run was refused."""
    args = parse_args(argv)
    from serve_app.tiny_models import ensure_tiny_model

    settings = EngineSettings(model_dir=str(ensure_tiny_model("dense")))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ratios: list[float | None] = [None, *([None] if args.control else []), *args.ratios]
    keys = [BASE, *([CONTROL] if args.control else []), *(f"{r:g}" for r in args.ratios)]
    sinks = {k: OtlpSink() for k, r in zip(keys, ratios) if r is not None}
    doc = {"command": " ".join([Path(sys.executable).name, "-m", "bench.tracing_cost", *(argv or sys.argv[1:])]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(), "versions": _versions(),
           "settings": settings.__dict__,
           "load": {"levels": args.levels, "rounds": args.rounds, "duration_s": args.duration, "input_len": args.input_len,
                    "output_len": args.output_len, "warmup_s": args.warmup},
           "variants": {k: {"label": _label(r) + (" (A/A control)" if k == CONTROL else ""), "sampling_ratio": r}
                        for k, r in zip(keys, ratios)}, "runs": []}
    specs = {}
    for k, r in zip(keys, ratios):
        tel = variant_telemetry(r, sinks[k].url if k in sinks else "")
        doc["variants"][k]["telemetry"] = tel
        specs[k] = build_stack("fleetserve", settings, work_dir=out / k, telemetry=tel)
    for name in args.without:
        label, experiments, tel = WITHOUT[name]
        k = f"without-{name}"
        keys.append(k)
        doc["variants"][k] = {"label": label, "sampling_ratio": None, "telemetry": tel, "experiments": list(experiments)}
        specs[k] = build_stack("fleetserve", settings, work_dir=out / k, experiments=experiments, telemetry=tel)
    load = dict(input_len=args.input_len, output_len=args.output_len)
    up: dict[str, tuple] = {}
    try:
        up = _start_all(specs, settings, out)
        for k, (_, url) in up.items():
            w = locust_run(url, settings.served_name, concurrency=max(args.levels), duration_s=args.warmup,
                           out_dir=out / k / "warmup", **load)
            doc["variants"][k]["requests_sent"] = w.requests_ok + w.requests_failed
        for rnd in range(args.rounds):
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)]  # a slot late in the round is nobody's for good
            for c in args.levels:
                for k in order:
                    tree, url = up[k]
                    before = _procs.tree_cpu_s(tree.pid)
                    lc = locust_run(url, settings.served_name, concurrency=c, duration_s=args.duration,
                                    out_dir=out / k / f"c{c}" / f"round-{rnd}", seed=rnd, **load)
                    cpu = cpu_by_role(before, _procs.tree_cpu_s(tree.pid))
                    doc["variants"][k]["requests_sent"] += lc.requests_ok + lc.requests_failed
                    doc["runs"].append(lc.as_dict() | {"variant": k, "round": rnd, "cpu_s_by_role": cpu,
                                                       "reason": lc.check.reason if lc.check else ""})
                    _log(f"round {rnd} c={c} {doc['variants'][k]['label']}: {lc.output_tokens_per_s:,.0f} tok/s, "
                         f"TTFT p50 {lc.ttft_p50_ms} ms, ok {lc.requests_ok} failed {lc.requests_failed}"
                         + ("" if lc.valid else f"  -> REFUSED ({lc.check.reason if lc.check else ''})"))
            (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        time.sleep(6.0)  # the SDK's batch processor exports every 5 s: let the last spans arrive
    except Exception as e:
        doc["error"] = f"{type(e).__name__}: {e}"
        _log(f"FAILED: {doc['error']}")
    finally:
        for tree, _ in up.values():
            _procs.stop(tree)
        for k, sink in sinks.items():
            exports, spans, traces = sink.snapshot()
            doc["variants"][k].update(exports=exports, spans=spans, traces=traces)
            sink.close()
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    report = render_tracing_report(doc)
    (out / "report.md").write_text(report)
    print("\n" + report)
    return 1 if doc.get("error") or any(not r["valid"] for r in doc["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
