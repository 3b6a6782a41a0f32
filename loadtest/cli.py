"""`fleetserve loadtest run|collect|sweep|report`: thin shells over `loadtest.runner`, `.sweep` and `.report`.

Locust is never imported here (it gevent-patches the importer, and fleetserve's CLI also
imports Ray): the runner starts locust in subprocesses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from loadtest.errors import LoadTestError
from loadtest.plan import SHAPE_KINDS, LoadPlan, build_plan, host_from_config, models_from_config, parse_duration
from loadtest.results import RunResults

__all__ = ["cli", "summary_lines", "server_lines"]

cli = typer.Typer(no_args_is_help=True, help="Locust load tests of the OpenAI API: run a plan, collect results, "
                  "sweep layouts, report.")


@cli.command("run")
def run_command(
    host: Optional[str] = typer.Option(None, help="Base URL; default: the config's http host and port."),
    model: list[str] = typer.Option([], "--model", "-m", help="Model name (repeat for a mix); default: all of the config's."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="fleetserve config YAML; default $FLEETSERVE_CONFIG, else the embedded one."),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="A LoadPlan JSON (e.g. a previous run's plan.json); other plan options are ignored."),
    users: int = typer.Option(8, min=1, help="Closed loop: concurrent users. Open loop: users carrying arrivals (>= rate x latency)."),
    spawn_rate: Optional[float] = typer.Option(None, help="Users started per second; default: all within 1 s (spike: 100/s)."),
    duration: str = typer.Option("60s", help="How long to send requests: 90, 90s, 2m, 1h30m (trace: whole trace if 0)."),
    workers: int = typer.Option(0, min=0, help="Locust worker processes; 0 runs one local process."),
    shape: str = typer.Option("constant", help=f"Load shape: {', '.join(SHAPE_KINDS)}."),
    rate: Optional[float] = typer.Option(None, help="poisson: mean requests per second over all workers."),
    trace: Optional[Path] = typer.Option(None, help="trace: JSONL with t_s (or start_unix_s), input_tokens, output_tokens."),
    time_scale: float = typer.Option(1.0, help="trace: replay speed (2 = twice as fast)."),
    step_users: Optional[int] = typer.Option(None, help="step: users added per step (default: --users)."),
    step_time: str = typer.Option("10s", help="step: length of a step."),
    max_users: Optional[int] = typer.Option(None, help="step: user cap."),
    spike_users: Optional[int] = typer.Option(None, help="spike: users during the spike (default: 4 x --users)."),
    spike_at: str = typer.Option("10s", help="spike: when it starts."),
    spike_for: str = typer.Option("10s", help="spike: how long it lasts."),
    input_len: str = typer.Option("128", help="Prompt tokens: 128, uniform:64-256, normal:128,32, lognormal:128,0.5."),
    output_len: str = typer.Option("128", help="Output tokens (max_tokens with ignore_eos), same forms."),
    endpoint: str = typer.Option("chat", help="chat (/v1/chat/completions) or completions (/v1/completions)."),
    dataset: Optional[Path] = typer.Option(None, help="JSONL prompts instead of synthetic ones."),
    seed: int = typer.Option(0, help="Seed of lengths, prompts and arrivals."),
    drain: str = typer.Option("5s", help="After the duration, wait this long for requests in flight."),
    think_time: str = typer.Option("0", help="Closed loop: pause between a user's requests, "
                                   "as seconds or a duration: 0.5, 0.5s, 1m."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Output dir: results.json, requests.jsonl, CSV, HTML, logs."),
    progress_interval: str = typer.Option("5s", help="Time between progress lines: 5, 5s, 1m."),
    fail_on: str = typer.Option("", "--fail-on", metavar="METRIC>LIMIT,...",
                                help="Exit 1 past these, e.g. error_rate>0.05,ttft_p95_ms>500; default: any failed request."),
    preflight_check: bool = typer.Option(True, "--preflight/--no-preflight",
                                         help="Check first that the host answers, accepts the key and lists the models."),
    metrics: list[str] = typer.Option([], "--metrics", metavar="URL", help=(
        "The app's Prometheus endpoint, http://<node>:<local_ray.metrics_export_port>/metrics (repeat per Ray node): "
        "scraped during the run into results.json's server series (queue, running, KV, replicas, target).")),
    metrics_interval: str = typer.Option("1s", help="Time between metric scrape rounds: 1, 1s, 0.5."),
) -> None:
    """Run a load plan headless (a master and --workers workers) and write results.json.

    Exit 1 when requests failed (or --fail-on thresholds are broken), with the top failure reasons;
    exit 2 for bad options or when the preflight finds no server, a refused key or an unknown model.

    Example: fleetserve loadtest run -m tiny-dense --users 4 --duration 30s --fail-on "error_rate>0.01" -o runs/smoke
    """
    from loadtest.gates import parse_fail_on, preflight, top_failures, verdict
    from loadtest.runner import run
    from serve_app.errors import ConfigError

    try:
        cfg = None
        if config is not None or not model or host is None:
            from serve_app.schema import load_config

            cfg = load_config(config)
        if plan_file is not None:
            plan = LoadPlan.from_file(plan_file)
        else:
            plan = build_plan(
                models=models_from_config(cfg, model), shape=shape, users=users,
                spawn_rate=spawn_rate, duration_s=parse_duration(duration, field="--duration") or None,
                rate_rps=rate, trace_path=str(trace) if trace else None, time_scale=time_scale, step_users=step_users,
                step_s=parse_duration(step_time, field="--step-time"), max_users=max_users, spike_users=spike_users,
                spike_at_s=parse_duration(spike_at, field="--spike-at"), spike_s=parse_duration(spike_for, field="--spike-for"),
                input_len=input_len, output_len=output_len, endpoint=endpoint,
                dataset_path=str(dataset) if dataset else None, seed=seed,
                drain_s=parse_duration(drain, field="--drain") or 0.0,
                think_time_s=parse_duration(think_time, field="--think-time") or 0.0,
                progress_interval_s=parse_duration(progress_interval, field="--progress-interval") or 5.0,
            )
        target = host or host_from_config(cfg)
        thresholds = parse_fail_on(fail_on)
        if preflight_check:
            preflight(target, list(plan.models), api_key=os.environ.get("FLEETSERVE_API_KEY"))
        typer.echo(f"load test: {plan.shape.kind} against {target} ({', '.join(plan.models)}), "
                   f"{workers or 'no'} workers, out {out}")
        results = run(target, plan, out_dir=out, workers=workers, progress=typer.echo, metrics=metrics,
                      metrics_interval_s=parse_duration(metrics_interval, field="--metrics-interval") or 1.0)
    except (LoadTestError, ConfigError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for line in summary_lines(results):
        typer.echo(line)
    typer.echo(f"results: {out / 'results.json'}")
    failed = verdict(results, thresholds)
    if failed:
        typer.echo("FAILED: " + "; ".join(failed), err=True)
        for line in top_failures(results):
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)


@cli.command("collect")
def collect_command(out: Path = typer.Argument(..., help="Out dir of a `locust -f loadtest/locustfile.py --out-dir` run.")) -> None:
    """Build results.json (and replay-trace.jsonl) from a plain locust run's files."""
    from loadtest.runner import collect_results, write_results

    try:
        results = collect_results(out)
    except LoadTestError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    write_results(results, out)
    for line in summary_lines(results):
        typer.echo(line)


def _loads(text: str, *, option: str, integer: bool) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values or any(v <= 0 or (integer and v != int(v)) for v in values):
        kind = "positive integers" if integer else "positive numbers"
        raise LoadTestError(f"{option} {text!r}: give a comma-separated list of {kind}, e.g. 1,4,8")
    return values


@cli.command("sweep")
def sweep_command(
    strategies: list[str] = typer.Argument(..., help="Layouts to compare: tp1 tp2 pp2 tp2-pp2 ep2 replicas=2; append "
                                            "':key=value,...' for engine_args overrides, e.g. pp2:enforce_eager=false."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model of the config to sweep; default: its only model."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="fleetserve config YAML; default $FLEETSERVE_CONFIG, else the embedded one."),
    address: Optional[str] = typer.Option(None, help="Ray cluster: host:6379 (on a node), ray://head:10001 (Ray Client); "
                                          "default $RAY_ADDRESS, else a local Ray started for the sweep."),
    local_nodes: int = typer.Option(0, min=0, help="Start a local multi-node Ray cluster with this many nodes instead."),
    cpus_per_node: float = typer.Option(2.0, min=1, help="--local-nodes: logical CPUs per node."),
    host: Optional[str] = typer.Option(None, help="Serve's HTTP proxy; default the config's http port on 127.0.0.1 "
                                       "(on the ray:// host for Ray Client)."),
    concurrency: str = typer.Option("1,4,8", help="Closed-loop ladder: concurrent users per step."),
    rate: Optional[str] = typer.Option(None, help="Open-loop ladder instead: Poisson requests/s per step, e.g. 1,2,4."),
    users: int = typer.Option(32, min=1, help="--rate: users carrying the arrivals (>= rate x E2E latency)."),
    step_duration: str = typer.Option("20s", help="Sending time of each ladder step."),
    drain: str = typer.Option("3s", help="Wait for requests in flight after each step."),
    input_len: int = typer.Option(128, min=1, help="Prompt tokens of every request."),
    output_len: int = typer.Option(64, min=1, help="Output tokens of every request (max_tokens with ignore_eos)."),
    warmup: int = typer.Option(2, min=0, help="Requests sent to each strategy before its ladder (not measured)."),
    workers: int = typer.Option(0, min=0, help="Locust worker processes per step (0: one local process)."),
    ttft_slo_ms: float = typer.Option(500.0, min=0, help="Goodput SLO: time to first token <= this (0: no bound)."),
    tpot_slo_ms: float = typer.Option(50.0, min=0, help="Goodput SLO: time per output token <= this (0: no bound)."),
    ready_timeout: str = typer.Option("15m", help="Per strategy: deploy to RUNNING and warmed up."),
    seed: int = typer.Option(0, help="Seed of prompts."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print each strategy's layout; deploy nothing."),
    out: Path = typer.Option(Path("runs/sweep"), "--out", "-o", help="Sweep dir: sweep.json, report, one run dir per step."),
    metrics: list[str] = typer.Option([], "--metrics", metavar="URL", help=(
        "Prometheus endpoint to scrape during each step (repeatable); default: every Ray node's metrics export port.")),
) -> None:
    """Deploy each strategy on Ray Serve, run the ladder against it, tear it down; write sweep.json and the report."""
    from loadtest.report import table_lines, write_report
    from cluster.ray_cluster import ray_session
    from loadtest.sweep import plan_sweep, run_sweep
    from loadtest.sweep_results import Ladder, Slo
    from serve_app.schema import load_config
    from serve_app.errors import ConfigError

    try:
        cfg = load_config(config)
        if dry_run:
            _print_plans(plan_sweep(cfg, model, strategies, allow_refused=True))
            return
        planned = plan_sweep(cfg, model, strategies)
        values = _loads(rate, option="--rate", integer=False) if rate else _loads(concurrency, option="--concurrency", integer=True)
        ladder = Ladder(kind="rate" if rate else "concurrency", values=values,
                        step_duration_s=parse_duration(step_duration, field="--step-duration") or 1.0,
                        drain_s=parse_duration(drain, field="--drain") or 0.0, input_tokens=input_len,
                        output_tokens=output_len, users=users if rate else None, workers=workers, warmup_requests=warmup)
        slo = Slo(ttft_ms=ttft_slo_ms or None, tpot_ms=tpot_slo_ms or None)
        target = host or _default_host(cfg, address)
        if not (address or os.environ.get("RAY_ADDRESS")):
            _check_port_free(target)
        # One lifecycle with fleetserve serve: fast-path env, local_ray.dashboard, sized for the largest strategy.
        if local_nodes and (address or os.environ.get("RAY_ADDRESS")):
            raise LoadTestError("--local-nodes starts a cluster here; it cannot be combined with --address/$RAY_ADDRESS")
        with ray_session(cfg, address=address, local_nodes=local_nodes, cpus_per_node=cpus_per_node,
                         size_for=[c for _, c in planned]) as session:
            sweep = run_sweep(cfg, [s for s, _ in planned], out_dir=out, host=target, ladder=ladder, model=model,
                              slo=slo, address=session.label, seed=seed, progress=typer.echo,
                              ready_timeout_s=parse_duration(ready_timeout, field="--ready-timeout") or 900.0,
                              metrics=metrics or None)
    except (LoadTestError, ConfigError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    files = write_report(sweep, out)
    for line in table_lines(sweep):
        typer.echo(line)
    typer.echo(f"sweep: {out / 'sweep.json'}; report: {files.html}, {files.throughput_png}")
    if any(s.error for s in sweep.strategies):
        raise typer.Exit(1)


def _check_port_free(url: str) -> None:
    """A Serve started here binds the host's port: fail now, not after Ray is up, when it is taken."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.socket() as s:
        try:
            s.bind((u.hostname or "127.0.0.1", u.port or 80))
        except OSError as e:
            raise LoadTestError(f"{u.hostname}:{u.port} is in use ({e.strerror}): the sweep starts its own Serve there; "
                                f"pass --host http://127.0.0.1:<free port>") from None


def _default_host(cfg, address: str | None) -> str:
    from urllib.parse import urlsplit

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("ray://"):  # Ray Client from a laptop: the proxy is on the head
        return f"http://{urlsplit(address).hostname}:{cfg.http.port}"
    return host_from_config(cfg)


def _print_plans(planned) -> None:
    from loadtest.strategies import cpu_refusal
    import ray

    from serve_app.app import layout_for

    if not ray.is_initialized():
        typer.echo("planned without a cluster: placement strategy auto is STRICT_PACK for one worker, else PACK "
                   "(on a live cluster: STRICT_PACK whenever a replica fits one node)")
    for s, c in planned:
        m = c.models[0]
        lay = layout_for(m, extra_accelerators=c.accelerators)
        why = cpu_refusal(m)
        typer.echo(f"{s.name}: tp{lay.parallelism.tensor} pp{lay.parallelism.pipeline} ep{lay.parallelism.expert} "
                   f"x{m.autoscaling.min_replicas}, bundles {list(lay.bundles)} {lay.strategy}, executor {lay.executor}, "
                   f"engine_args {m.engine_args}" + (f"\n  refused here: {why}" if why else ""))


@cli.command("report")
def report_command(
    sweep_dir: Path = typer.Argument(..., help="A sweep dir (with sweep.json), the sweep.json itself, or a run dir "
                                     "(with results.json)."),
    ttft_slo_ms: Optional[float] = typer.Option(None, min=0, help="Re-score goodput at this TTFT bound (0: no bound)."),
    tpot_slo_ms: Optional[float] = typer.Option(None, min=0, help="Re-score goodput at this TPOT bound (0: no bound)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write report.html and the PNGs; default the sweep dir."),
) -> None:
    """Print a sweep's table and write report.html and its PNGs; for a run dir, write its timeline.png.

    A run dir (results.json, no sweep.json) gets timeline.png: client TTFT/TPOT/goodput above the
    server series scraped during the run (goodput at --ttft-slo-ms/--tpot-slo-ms, default 500/50 ms).
    """
    from loadtest.report import table_lines, write_report
    from loadtest.sweep_results import Slo, load_sweep, with_slo

    root = sweep_dir if sweep_dir.is_dir() else sweep_dir.parent
    if (root / "results.json").exists() and not (root / "sweep.json").exists():
        _run_report(root, out, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms)
        return
    try:
        sweep = load_sweep(sweep_dir)
        if ttft_slo_ms is not None or tpot_slo_ms is not None:
            ttft = sweep.slo.ttft_ms if ttft_slo_ms is None else (ttft_slo_ms or None)
            tpot = sweep.slo.tpot_ms if tpot_slo_ms is None else (tpot_slo_ms or None)
            sweep = with_slo(sweep, root, Slo(ttft_ms=ttft, tpot_ms=tpot))
    except LoadTestError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    files = write_report(sweep, out or root, sweep_dir=root)
    for line in table_lines(sweep):
        typer.echo(line)
    typer.echo(f"report: {files.html}, {files.throughput_png}, {files.latency_png}, {files.goodput_png}")


def _run_report(run_dir: Path, out: Path | None, *, ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> None:
    from loadtest.results import load_results
    from loadtest.sweep_results import Slo
    from loadtest.timeline import write_run_report

    default = Slo()
    slo = Slo(ttft_ms=default.ttft_ms if ttft_slo_ms is None else (ttft_slo_ms or None),
              tpot_ms=default.tpot_ms if tpot_slo_ms is None else (tpot_slo_ms or None))
    try:
        results = load_results(run_dir / "results.json")
        png = write_run_report(run_dir, out, slo=slo)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        typer.echo(f"error: {run_dir / 'results.json'}: {e}", err=True)
        raise typer.Exit(2) from None
    for line in summary_lines(results):
        typer.echo(line)
    typer.echo(f"timeline: {png}")


def summary_lines(r: RunResults) -> list[str]:
    """Format a run's headline numbers and one row per metric."""
    lines = [f"requests {r.requests.total} (failed {r.requests.failed}) in {r.duration_s:.1f} s; "
             f"sent {r.sent_rps:.2f} req/s; output {r.output_tokens_per_s:.1f} tok/s",
             f"{'metric':<6} {'unit':>5} {'count':>8} {'p50':>9} {'p90':>9} {'p99':>9}"]
    for name, m in r.metrics.items():
        cells = [f"{v:9.1f}" if v is not None else f"{'-':>9}" for v in (m.p50, m.p90, m.p99)]
        lines.append(f"{name:<6} {m.unit:>5} {m.count:>8} {' '.join(cells)}")
    lines += server_lines(r)
    lines += [f"note: {n}" for n in r.notes]
    return lines


def server_lines(r: RunResults) -> list[str]:
    """One line per model of the scraped server series (or why there is none)."""
    if r.server is None:
        return ["server: not scraped (pass --metrics http://<node>:<metrics_export_port>/metrics)"]
    out = []
    for model, m in r.server.models.items():
        pts = m.points
        out.append(f"server {model}: {len(pts)} points; waiting max {max(p.waiting_requests for p in pts):g}, "
                   f"running max {max(p.running_requests for p in pts):g}, replicas "
                   f"{min(p.replicas for p in pts)}-{max(p.replicas for p in pts)}, {len(m.scale_events)} scale events")
    if not r.server.models:
        out.append(f"server: no series from {', '.join(r.server.endpoints)} ({r.server.rounds} rounds, "
                   f"{r.server.scrapes_failed} failed scrapes)")
    return out
