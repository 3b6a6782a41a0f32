"""The same Locust burst against Serve's request-based autoscaler and against our queue-depth policy.

    python bench/autoscaling_burst.py                    # Serve default at target_ongoing_requests 4, 5, 8; then ours
    python bench/autoscaling_burst.py --targets 5 --rounds 2 --out runs/burst

One local Ray (8 logical CPUs) and Serve on a free 127.0.0.1 port. For each variant, in turn:

    deploy model "sim" (SIMULATOR engine, 1..4 replicas, same windows) ──► wait for 1 running replica
    Locust spike (loadtest.run, one subprocess) ──HTTP──► Serve proxy ──► sim replicas
    poller thread: controller's target and replica states every 0.25 s
    after the load: keep polling for --settle-s, then delete the app

and prints TTFT p50/p95, replica-seconds (replicas holding resources: starting, running or stopping,
integrated over the same horizon for every variant), scale events and the ratio ours / default.

Fair comparison: both variants get the same bounds, the same metrics push interval and look-back,
and Serve's upscale/downscale_delay_s equal our upscale/downscale_stabilization_s. Serve's
target_ongoing_requests is swept; `max_num_seqs + target_queue_per_replica` asks each replica for
the same load as our target (a full batch plus one waiting request).

`--max-ongoing` (default 8, twice the simulated batch) caps what Serve hands one replica: the
rest wait at Serve's handle, where a replica that comes up can take them. With the app's
default of 256 every request of the burst is routed at once into the first replica's engine
queue, no later replica can take it, and TTFT p95 measures that queue, whatever the policy does.

The simulated replica is deliberately small (4 sequences, ~60 ms a step), so one Locust process
on a 2-core machine can overload it and four replicas hold the spike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

_SIM = {"startup_s": 2.0, "max_num_seqs": 4, "decode_step_base_s": 0.04, "decode_step_per_seq_s": 0.005,
        "prefill_s_per_token": 0.0002}
_COMMON = {"min_replicas": 1, "max_replicas": 4, "metrics_push_interval_s": 0.5, "metrics_look_back_s": 2.0,
           "upscale_stabilization_s": 2.0, "downscale_stabilization_s": 10.0}
_OURS = {"policy": "queue_depth", "target_queue_per_replica": 1, "policy_interval_s": 0.5,
         "upscale_cooldown_s": 2.0, "downscale_cooldown_s": 2.0}
MODEL = "sim"
_STATES_HOLDING = ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "STOPPING", "PENDING_MIGRATION")


@dataclass
class Variant:
    """One autoscaling setup to run the burst against."""

    label: str
    autoscaling: dict


@dataclass
class Outcome:
    """What one burst against one variant produced."""

    label: str
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    e2e_p95_ms: float | None
    requests_ok: int
    requests_failed: int
    replica_s: float
    peak_replicas: int
    scale_ups: int
    scale_downs: int
    first_scale_up_s: float | None  # after the spike started
    back_to_min_s: float | None  # after the load ended
    decisions: int | None = None  # ours only: audit-trail length over the run
    targets: list[tuple[float, int]] = field(default_factory=list)  # (s from load start, target)
    load_1m: tuple[float, float] | None = None  # machine load average at deploy and at the end: contention check


def _model_config(autoscaling: dict, port: int, max_ongoing: int) -> dict:
    return {"name": "burst", "http": {"port": port}, "models": [{
        "name": MODEL, "source": "tiny:dense", "engine": "sim", "sim": _SIM, "max_model_len": 1024,
        "placement": {"accelerator": "CPU"}, "autoscaling": autoscaling, "max_ongoing_requests": max_ongoing}]}


class _Poller(threading.Thread):
    """Samples the controller's target and the replica states of model-sim every `interval_s`."""

    def __init__(self, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int, int]] = []  # (epoch s, target, holding, running)
        self._halt = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self._halt.is_set():
            try:
                dep = serve.status().applications["burst"].deployments[f"model-{MODEL}"]
                states = {str(getattr(k, "value", k)): n for k, n in dep.replica_states.items()}
                holding = sum(n for k, n in states.items() if k in _STATES_HOLDING)
                # Serve's public status has no target count: the replicas not stopping stand in for it
                # (a new target shows as soon as its replicas are created, STARTING).
                self.samples.append((time.time(), holding - states.get("STOPPING", 0), holding, states.get("RUNNING", 0)))
            except KeyError:
                pass  # app not listed yet / any more
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _integrate(samples, t0: float, t1: float) -> float:
    """Replica-seconds held in [t0, t1], each sample holding until the next."""
    total = 0.0
    for (t, _, held, _), (t_next, *_rest) in zip(samples, samples[1:] + [(t1, 0, 0, 0)]):
        a, b = max(t, t0), min(t_next, t1)
        if b > a:
            total += held * (b - a)
    return total


def run_variant(variant: Variant, *, url: str, port: int, out: Path, plan, settle_s: float, max_ongoing: int) -> Outcome:
    """Deploy `variant`, run the burst, measure, delete the app."""
    import httpx
    from ray import serve

    from cluster.ray_cluster import deploy
    from loadtest import run
    from serve_app.app import build_application
    from serve_app.schema import parse_config

    cfg = parse_config(_model_config(variant.autoscaling, port, max_ongoing))
    load_start = os.getloadavg()[0]
    deploy(build_application(cfg), name="burst")
    poller = _Poller()
    poller.start()
    try:
        deadline = time.monotonic() + 60
        while not (poller.samples and poller.samples[-1][1:] == (1, 1, 1)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant.label}: model-{MODEL} not at one running replica after 60 s")
            time.sleep(0.2)
        results = run(url, plan, out_dir=out / variant.label, progress=None)
        t0 = results.started_unix_s  # Locust's test start: the shape's clock
        load_end = t0 + plan.duration_s + plan.drain_s
        horizon = load_end + settle_s
        while time.time() < horizon:
            time.sleep(0.25)
        audit = None
        if variant.autoscaling.get("policy", "queue_depth") == "queue_depth":
            audit = httpx.get(f"{url}/-/autoscaler/{MODEL}", timeout=30).json()["decisions"]
    finally:
        poller.stop()
        serve.delete("burst")
    samples = [s for s in poller.samples if s[0] <= horizon]
    targets = [(round(t - t0, 2), n) for t, n, _, _ in samples]
    changes = [(t, a, b) for (_, a), (t, b) in zip(targets, targets[1:]) if a != b]
    spike_at = t0 + plan.shape.spike_at_s
    first_up = next((t for t, a, b in changes if b > a), None)
    back = next((t for t, a, b in reversed(changes) if b == 1 and b < a), None)
    ttft, e2e = results.metrics.get("TTFT"), results.metrics.get("E2E")
    return Outcome(
        label=variant.label,
        ttft_p50_ms=ttft.p50 if ttft else None, ttft_p95_ms=ttft.p95 if ttft else None,
        e2e_p95_ms=e2e.p95 if e2e else None,
        requests_ok=results.requests.ok, requests_failed=results.requests.failed,
        replica_s=round(_integrate(samples, t0, horizon), 1),
        peak_replicas=max(s[2] for s in samples),
        scale_ups=sum(b > a for _, a, b in changes), scale_downs=sum(b < a for _, a, b in changes),
        first_scale_up_s=None if first_up is None else round(t0 + first_up - spike_at, 1),
        back_to_min_s=None if back is None else round(t0 + back - load_end, 1),
        decisions=None if audit is None else sum(1 for r in audit if t0 <= r["time_s"] <= horizon),
        targets=[(t, b) for t, _, b in changes],
        load_1m=(round(load_start, 1), round(os.getloadavg()[0], 1)),
    )


def _mean(group: list[Outcome], label: str) -> Outcome:
    """The variant's mean over rounds (counts rounded to one decimal)."""
    def avg(name: str):
        vals = [getattr(o, name) for o in group if getattr(o, name) is not None]
        return round(statistics.fmean(vals), 1) if vals else None

    return Outcome(label=label, **{f.name: avg(f.name) for f in fields(Outcome)
                                   if f.name not in ("label", "targets", "load_1m")})


def _table(outcomes: list[Outcome], ours: Outcome) -> str:
    cols = ("variant", "TTFT p50 ms", "TTFT p95 ms", "E2E p95 ms", "ok", "replica-s", "peak", "ups", "downs",
            "first up s", "to min s", "p95 ours/this", "replica-s ours/this")

    def f(x) -> str:
        return "-" if x is None else f"{x:g}"

    def ratio(a, b) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    rows = [(o.label, f(o.ttft_p50_ms), f(o.ttft_p95_ms), f(o.e2e_p95_ms), f(o.requests_ok), f(o.replica_s),
             f(o.peak_replicas), f(o.scale_ups), f(o.scale_downs), f(o.first_scale_up_s), f(o.back_to_min_s),
             ratio(ours.ttft_p95_ms, o.ttft_p95_ms), ratio(ours.replica_s, o.replica_s)) for o in outcomes]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="4,5,8", help="Serve target_ongoing_requests values to sweep (comma-separated).")
    ap.add_argument("--rounds", type=int, default=1, help="Repeat every variant this many times (interleaved).")
    ap.add_argument("--out", default="runs/autoscaling-burst", help="Directory for Locust outputs and summary.json.")
    ap.add_argument("--settle-s", type=float, default=25.0, help="Seconds measured after the load ends.")
    ap.add_argument("--max-ongoing", type=int, default=8,
                    help="The model's max_ongoing_requests: requests a replica takes at once; the rest wait at "
                         "Serve's handle, where a new replica can take them (the app's default is 256).")
    args = ap.parse_args(argv)

    from loadtest import build_plan

    # One spike: 2 users, 20 users from 10 s to 35 s, 2 users to 45 s; 64-token prompts, 16 tokens out.
    plan = build_plan(models=[MODEL], shape="spike", users=2, spike_users=20, spike_at_s=10, spike_s=25,
                      duration_s=45, drain_s=3, input_len=64, output_len=16, progress_interval_s=15)
    variants = [Variant(f"serve-default-t{t:g}", {**_COMMON, "policy": "serve_default",
                                                  "serve_target_ongoing_requests": float(t)})
                for t in (float(x) for x in args.targets.split(","))]
    variants.append(Variant("queue-depth", {**_COMMON, **_OURS}))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    from cluster.ray_env import free_local_port

    port = free_local_port()
    url = f"http://127.0.0.1:{port}"
    # A Ray of our own (cluster.ray_cluster: address="local"), as these figures were measured: Serve's
    # default HTTP path (no fast-path env), no dashboard, 8 logical CPUs.
    from cluster.ray_cluster import ensure_ray, start_serve
    from serve_app.schema import parse_config

    lifecycle = parse_config({**_model_config({}, port, args.max_ongoing), "http": {"port": port, "fast_path": False}})
    session = ensure_ray(lifecycle, address="local", init_kwargs={"num_cpus": 8, "log_to_driver": False})
    outcomes: list[Outcome] = []
    try:
        start_serve(host="127.0.0.1", port=port)
        for rnd in range(args.rounds):
            for v in variants:
                label = v.label if args.rounds == 1 else f"{v.label}-r{rnd + 1}"
                print(f"[burst] {label}: deploying and running the spike ...", flush=True)
                o = run_variant(Variant(label, v.autoscaling), url=url, port=port, out=out, plan=plan,
                                settle_s=args.settle_s, max_ongoing=args.max_ongoing)
                print(f"[burst] {label}: TTFT p95 {o.ttft_p95_ms} ms, {o.replica_s} replica-s, "
                      f"{o.scale_ups} up / {o.scale_downs} down, targets {o.targets}, load {o.load_1m}", flush=True)
                outcomes.append(o)
    finally:
        session.close()
    shown = outcomes if args.rounds == 1 else [_mean([o for o in outcomes if o.label.rsplit("-r", 1)[0] == v.label], v.label)
                                               for v in variants]
    print()
    if args.rounds > 1:
        print(f"means over {args.rounds} rounds:")
    print(_table(shown, next(o for o in shown if o.label.startswith("queue-depth"))))
    summary = {"means": [asdict(o) for o in shown] if args.rounds > 1 else None, "plan": json.loads(plan.model_dump_json()), "sim": _SIM, "common": _COMMON, "ours": _OURS,
               "settle_s": args.settle_s, "max_ongoing_requests": args.max_ongoing, "outcomes": [asdict(o) for o in outcomes]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
