"""`fleetserve loadtest run|collect`: thin shells over `loadtest.runner`.

Locust is never imported here (it gevent-patches the importer, and fleetserve's CLI also
imports Ray): the runner starts locust in subprocesses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loadtest.errors import LoadTestError
from loadtest.plan import SHAPE_KINDS, LoadPlan, build_plan, host_from_config, models_from_config, parse_duration
from loadtest.results import RunResults

__all__ = ["cli", "summary_lines"]

cli = typer.Typer(no_args_is_help=True, help="Locust load tests of the OpenAI API: run a plan, collect results.")


@cli.command("run")
def run_command(
    host: Optional[str] = typer.Option(None, help="Base URL; default: the config's http host and port."),
    model: list[str] = typer.Option([], "--model", "-m", help="Model name (repeat for a mix); default: all of the config's."),
    config: Optional[Path] = typer.Option(None, "--config", help="fleetserve config YAML; default $FLEETSERVE_CONFIG, else the embedded one."),
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
    think_time: float = typer.Option(0.0, help="Closed loop: seconds between a user's requests."),
    out: Path = typer.Option(Path("runs/latest"), help="Output dir: results.json, requests.jsonl, CSV, HTML, logs."),
    progress_interval: float = typer.Option(5.0, help="Seconds between progress lines."),
) -> None:
    """Run a load plan headless (a master and --workers workers) and write results.json."""
    from loadtest.runner import run
    from serve_app.errors import ConfigError

    try:
        cfg = None
        if config is not None or not model or host is None:
            from serve_app.config import load_config

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
                drain_s=parse_duration(drain, field="--drain") or 0.0, think_time_s=think_time,
                progress_interval_s=progress_interval,
            )
        target = host or host_from_config(cfg)
        typer.echo(f"load test: {plan.shape.kind} against {target} ({', '.join(plan.models)}), "
                   f"{workers or 'no'} workers, out {out}")
        results = run(target, plan, out_dir=out, workers=workers, progress=typer.echo)
    except (LoadTestError, ConfigError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for line in summary_lines(results):
        typer.echo(line)
    typer.echo(f"results: {out / 'results.json'}")


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


def summary_lines(r: RunResults) -> list[str]:
    """Format a run's headline numbers and one row per metric."""
    lines = [f"requests {r.requests.total} (failed {r.requests.failed}) in {r.duration_s:.1f} s; "
             f"sent {r.sent_rps:.2f} req/s; output {r.output_tokens_per_s:.1f} tok/s",
             f"{'metric':<6} {'unit':>5} {'count':>8} {'p50':>9} {'p90':>9} {'p99':>9}"]
    for name, m in r.metrics.items():
        cells = [f"{v:9.1f}" if v is not None else f"{'-':>9}" for v in (m.p50, m.p90, m.p99)]
        lines.append(f"{name:<6} {m.unit:>5} {m.count:>8} {' '.join(cells)}")
    lines += [f"note: {n}" for n in r.notes]
    return lines
