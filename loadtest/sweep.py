"""Strategy sweep: deploy each layout of one model on a Ray cluster, load it with a ladder, tear it down.

    config + ["tp1", "tp2", "pp2:enforce_eager=false"]
      └─ plan_sweep: every strategy parsed, applied, re-validated, checked runnable ── before any deploy
    per strategy:
      layout_for(model) ──► build_application(cfg) ──► ray_cluster.deploy(app, wait=False) ──► poll serve.status()
        (deadline) ──► read the app's placement groups from Ray ──► warm-up requests over HTTP
        ──► ladder: loadtest.run(host, constant(users=c) | poisson(rate=r)) per step, in subprocesses,
            scraping every node's Ray metrics export port (or --metrics) into the step's results.json
        ──► serve.delete(app) ──► poll Ray until the app's placement groups are gone (deadline)
      sweep.json rewritten after every strategy (a crash keeps what was measured)

Deploys go through Serve's public Python API (cluster.ray_cluster) on whatever Ray this process
is connected to: a local Ray or local multi-node cluster started by `cluster.ray_cluster.ray_session`
(the CLI's), `ray.init(address="host:6379")` from a cluster node, or Ray Client (`ray://head:10001`)
from a laptop. Locust is never imported here
(loadtest.run starts it in subprocesses); ray and serve_app.app are imported inside functions
so `import loadtest` stays light.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import time
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlsplit

from loadtest.errors import LoadTestError
from loadtest.plan import build_plan
from loadtest.results import read_requests
from loadtest.scraper import check_endpoint
from loadtest.strategies import Strategy, apply_strategy, cpu_refusal, parse_strategy, select_model
from loadtest.sweep_results import (
    ClusterInfo, Ladder, NodeInfo, PlacementGroupSeen, Slo, StrategyLayout, StrategyResult, SweepResults, step_result,
    write_sweep,
)
from serve_app.schema import AppConfig
from serve_app.errors import ConfigError

__all__ = ["plan_sweep", "run_sweep", "cluster_info", "app_placement_groups", "node_metrics_endpoints", "SWEEP_NOTE"]

SWEEP_NOTE = ("the locust load generator ran on a machine that is also a Ray node of the cluster (see "
              "cluster.load_generator): it competes with the engines for CPU, most on a small box")
_SERVE_PG_PREFIX = "SERVE_REPLICA::"  # Serve names a replica's group after the replica: SERVE_REPLICA::<app>#<dep>#<id>


def plan_sweep(config: AppConfig, model: str | None, strategies: Sequence[str | Strategy], *,
               allow_refused: bool = False) -> list[tuple[Strategy, AppConfig]]:
    """Parse, apply and re-validate every strategy; raise one LoadTestError listing every problem.

    A strategy the CPU platform cannot run (EP; PP in eager mode) is a problem unless
    `allow_refused` (planning only, e.g. --dry-run).
    """
    select_model(config, model)  # an unknown or ambiguous model is one problem, not one per strategy
    planned, problems = [], []
    for item in strategies:
        try:
            s = item if isinstance(item, Strategy) else parse_strategy(item)
            cfg = apply_strategy(config, model, s)
        except (LoadTestError, ConfigError) as e:
            problems.append(str(e))
            continue
        why = cpu_refusal(cfg.models[0])
        if why and not allow_refused:
            problems.append(f"strategy {s.name!r} cannot run on this CPU placement: {why}")
        planned.append((s, cfg))
    slugs = [s.slug for s, _ in planned]
    for dup in sorted({x for x in slugs if slugs.count(x) > 1}):
        problems.append(f"two strategies share the directory name {dup!r}; list each layout once")
    if problems:
        raise LoadTestError("\n".join(problems))
    if not planned:
        raise LoadTestError("no strategy to sweep; give e.g. tp1 tp2 pp2")
    return planned


def run_sweep(config: AppConfig, strategies: Sequence[str | Strategy], *, out_dir: str | Path, host: str,
              ladder: Ladder, model: str | None = None, slo: Slo = Slo(), address: str = "local",
              ready_timeout_s: float = 900.0, teardown_timeout_s: float = 120.0, app_prefix: str = "sweep",
              seed: int = 0, progress: Callable[[str], None] | None = print,
              metrics: Sequence[str] | None = None) -> SweepResults:
    """Sweep `strategies` of `model` on the Ray cluster this process is connected to; write sweep.json.

    `metrics`: Prometheus endpoints every step scrapes into its results.json's server series;
    None: every alive node's Ray metrics export port (`node_metrics_endpoints`); () scrapes nothing.

    Ray must be initialized; Serve is started with its proxy at `host` (ignored when Serve already
    runs: then `host` must be where it listens). A failed strategy is recorded (`error`) and the
    sweep goes on; invalid or refused strategies raise LoadTestError before anything is deployed.
    """
    import ray

    if not ray.is_initialized():
        raise LoadTestError("run_sweep needs a connected Ray (ray.init(address=...)); the CLI connects for you")
    planned = plan_sweep(config, model, strategies)
    say = progress or (lambda _line: None)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    endpoints = tuple(node_metrics_endpoints() if metrics is None else metrics)
    for url in endpoints:  # a bad URL is an error now, not in every step
        check_endpoint(url)
    say(f"[sweep] scraping {', '.join(endpoints) or 'no metrics endpoint'} during every step")
    _ensure_serve(host)
    first = planned[0][1].models[0]
    sweep = SweepResults(model=first.name, source=first.source, host=host, started_unix_s=time.time(),
                         cluster=cluster_info(address), ladder=ladder, slo=slo,
                         notes=(SWEEP_NOTE,) if _load_shares_a_node() else ())
    write_sweep(sweep, out)
    for strategy, cfg in planned:
        say(f"[sweep] {strategy.name}: deploying")
        result = _sweep_one(strategy, cfg, out=out, host=host, ladder=ladder, slo=slo, app=f"{app_prefix}-{strategy.slug}",
                            ready_timeout_s=ready_timeout_s, teardown_timeout_s=teardown_timeout_s, seed=seed, say=say,
                            metrics=endpoints)
        sweep = sweep.model_copy(update={"strategies": sweep.strategies + (result,)})
        write_sweep(sweep, out)
    sweep = sweep.model_copy(update={"finished_unix_s": time.time()})
    write_sweep(sweep, out)
    return sweep


def _sweep_one(strategy: Strategy, cfg: AppConfig, *, out: Path, host: str, ladder: Ladder, slo: Slo, app: str,
               ready_timeout_s: float, teardown_timeout_s: float, seed: int, say: Callable[[str], None],
               metrics: Sequence[str] = ()) -> StrategyResult:
    from ray import serve

    from cluster import ray_cluster
    from serve_app.app import build_application, layout_for

    m = cfg.models[0]
    result = StrategyResult(name=strategy.name, slug=strategy.slug)
    deployed = False
    try:
        lay = layout_for(m, extra_accelerators=cfg.accelerators, where="models[0]")
        layout = StrategyLayout.from_layout(lay, replicas=m.autoscaling.min_replicas, engine_args=dict(m.engine_args))
        result = result.model_copy(update={"layout": layout})
        say(f"[sweep] {strategy.name}: {layout.short()}, executor {layout.executor}")
        t0 = time.monotonic()
        application = build_application(cfg, layouts=[lay])  # probes the placement group with a deadline first
        deployed = True  # from here on, delete whatever part of the app exists (deleting none is a no-op)
        # serve.run would wait for RUNNING with no deadline: submit, then poll with ours.
        ray_cluster.deploy(application, name=app, wait=False)
        _wait_running(app, deadline=t0 + ready_timeout_s)
        groups = app_placement_groups(app)
        result = result.model_copy(update={"placement_groups": groups})
        _warm_up(host, m.name, ladder, deadline=t0 + ready_timeout_s)
        result = result.model_copy(update={"ready_s": time.monotonic() - t0})
        say(f"[sweep] {strategy.name}: ready in {result.ready_s:.1f} s; placement groups "
            + ", ".join(f"{len(g.bundles)} bundles {g.strategy} on {g.nodes} node(s)" for g in groups))
        for load in ladder.values:
            step = _run_step(strategy, m.name, load, out=out, host=host, ladder=ladder, slo=slo, seed=seed, say=say,
                             metrics=metrics)
            result = result.model_copy(update={"steps": result.steps + (step,)})
    except Exception as e:  # noqa: BLE001 -- one strategy's failure must not lose the others' results
        say(f"[sweep] {strategy.name}: FAILED: {e}")
        result = result.model_copy(update={"error": f"{type(e).__name__}: {e}"})
    finally:
        if deployed:
            t1 = time.monotonic()
            try:
                serve.delete(app)
                _wait_groups_gone(app, deadline=t1 + teardown_timeout_s)
                result = result.model_copy(update={"teardown_s": time.monotonic() - t1})
                say(f"[sweep] {strategy.name}: deleted; placement groups released in {result.teardown_s:.1f} s")
            except LoadTestError as e:
                result = result.model_copy(update={"error": (result.error + "; " if result.error else "") + str(e)})
    return result


def _run_step(strategy: Strategy, model: str, load: float, *, out: Path, host: str, ladder: Ladder, slo: Slo,
              seed: int, say: Callable[[str], None], metrics: Sequence[str] = ()):
    from loadtest.runner import run

    if ladder.kind == "concurrency":
        plan = build_plan(models=[model], shape="constant", users=int(load), duration_s=ladder.step_duration_s,
                          input_len=ladder.input_tokens, output_len=ladder.output_tokens, seed=seed,
                          drain_s=ladder.drain_s, progress_interval_s=max(5.0, ladder.step_duration_s))
        label = f"c{int(load)}"
    else:
        plan = build_plan(models=[model], shape="poisson", rate_rps=load, users=ladder.users or 32,
                          duration_s=ladder.step_duration_s, input_len=ladder.input_tokens,
                          output_len=ladder.output_tokens, seed=seed, drain_s=ladder.drain_s,
                          progress_interval_s=max(5.0, ladder.step_duration_s))
        label = f"r{load:g}"
    run_dir = out / strategy.slug / label
    results = run(host, plan, out_dir=run_dir, workers=ladder.workers, progress=None, metrics=metrics)
    step = step_result(load, results, read_requests(run_dir / "requests.jsonl"), slo=slo,
                       run_dir=str(run_dir.relative_to(out)))
    say(f"[sweep] {strategy.name} {ladder.kind} {load:g}: {step.output_tokens_per_s:.0f} tok/s, "
        f"{step.requests_per_s:.2f} req/s, TTFT p50 {_ms(step.ttft_ms.p50)}, ITL p50 {_ms(step.itl_ms.p50)}, "
        f"goodput {step.goodput.requests_per_s:.2f} req/s ({step.goodput.fraction:.0%}), failed {step.requests_failed}")
    return step


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _ensure_serve(host: str) -> None:
    """Start Serve with its proxy where `host` points (a no-op, with Serve's warning, when it already runs)."""
    from cluster.ray_cluster import start_serve

    u = urlsplit(host)
    if not u.hostname or not u.port:
        raise LoadTestError(f"host {host!r} needs a scheme, host and port, e.g. http://127.0.0.1:8000")
    local = u.hostname in ("127.0.0.1", "localhost")
    start_serve(host="127.0.0.1" if local else "0.0.0.0", port=u.port)


def _wait_running(app: str, *, deadline: float) -> None:
    from ray import serve

    last = "not started"
    while True:
        status = serve.status().applications.get(app)
        if status is not None:
            last = f"{status.status}" + (f": {status.message}" if status.message else "")
            if status.status == "RUNNING":
                return
            if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                detail = "; ".join(f"{name} {d.status}: {d.message}" for name, d in status.deployments.items() if d.message)
                raise LoadTestError(f"app {app!r} is {status.status}: {detail or status.message}")
        if time.monotonic() > deadline:
            raise LoadTestError(f"app {app!r} not RUNNING within the ready timeout (last status {last}); "
                                f"raise --ready-timeout or check the replica logs (ray logs / dashboard)")
        time.sleep(1.0)


def _warm_up(host: str, model: str, ladder: Ladder, *, deadline: float) -> None:
    """Send the warm-up requests; retry until the proxy routes to the new app (404/502 right after RUNNING)."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "warm up"}], "stream": True,
            "max_tokens": min(ladder.output_tokens, 16), "ignore_eos": True}
    sent, last = 0, ""
    while sent < max(1, ladder.warmup_requests):
        try:
            with httpx.stream("POST", host.rstrip("/") + "/v1/chat/completions", json=body, timeout=120) as r:
                text = "".join(r.iter_text())
            if r.status_code == 200 and "[DONE]" in text:
                sent += 1
                continue
            last = f"HTTP {r.status_code}: {text[:200]}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise LoadTestError(f"warm-up against {host} failed until the ready timeout: {last}; is Serve's "
                                f"proxy at {host}? (pass --host for a remote cluster)")
        time.sleep(0.5)


def node_metrics_endpoints() -> tuple[str, ...]:
    """Return every alive Ray node's metrics export endpoint (where its processes' Prometheus metrics are)."""
    import ray

    return tuple(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes()
                 if n.get("Alive") and n.get("MetricsExportPort"))


def app_placement_groups(app: str) -> tuple[PlacementGroupSeen, ...]:
    """Return the CREATED placement groups of `app`'s replicas, from Ray's placement group table."""
    import ray

    out = []
    for g in ray.util.placement_group_table().values():
        if g.get("name", "").startswith(f"{_SERVE_PG_PREFIX}{app}#") and g.get("state") == "CREATED":
            bundles = tuple({k: float(v) for k, v in b.items()} for _, b in sorted(g["bundles"].items()))
            out.append(PlacementGroupSeen(bundles=bundles, strategy=g["strategy"],
                                          nodes=len(set(g.get("bundles_to_node_id", {}).values()))))
    return tuple(out)


def _wait_groups_gone(app: str, *, deadline: float) -> None:
    while app_placement_groups(app):
        if time.monotonic() > deadline:
            raise LoadTestError(f"app {app!r} deleted but its placement groups still hold resources after the "
                                f"teardown timeout; the next strategy may not fit")
        time.sleep(0.5)


def _load_shares_a_node() -> bool:
    """True when this machine (where locust runs) is also one of the cluster's alive nodes."""
    import ray

    mine = {"127.0.0.1"}
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outbound interface
        mine.add(s.getsockname()[0])
    return any(n.get("Alive") and n.get("NodeManagerAddress") in mine for n in ray.nodes())


def cluster_info(address: str) -> ClusterInfo:
    """Describe the connected Ray cluster's alive nodes and this (load-generating) machine."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = {k: float(v) for k, v in n["Resources"].items()
               if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        if "memory" in n["Resources"]:
            res["memory_gib"] = round(n["Resources"]["memory"] / 2**30, 1)
        nodes.append(NodeInfo(node_id=n["NodeID"][:12], resources=res))
    gen = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    return ClusterInfo(address=address, ray_version=ray.__version__, nodes=tuple(nodes), load_generator=gen)
