"""`fleetserve autoscaler replay` and `tune`: one replay command for three kinds of input.

    request trace (CSV / JSONL / gen:...) ──► des.run_replay per policy ──► table, JSON, report
    audit trail (decision records)        ──► replay.rerun: what each policy would have decided
    load points (t_s + load, loadtest's replay-trace.jsonl) ──► replay.replay (load level, no latency)

The kind is read from the file's first record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from serve_app.autoscaling.audit import EVENT, DecisionRecord, decision_record
from serve_app.autoscaling.cli import cli, echo_records, replay_records, summarize
from serve_app.errors import ConfigError

__all__ = ["trace_kind", "replay_requests", "rerun_records"]


def trace_kind(spec: str) -> str:
    """Return "requests", "records" or "points" for a trace file (or "requests" for a gen: spec)."""
    if spec.startswith("gen:"):
        return "requests"
    p = Path(spec).expanduser()
    if not p.exists():
        raise ConfigError([("", f"trace file {p} does not exist; give a file or gen:KIND,duration_s=...")], source=spec)
    try:
        with open(p) as f:
            head = f.read(4096)
    except OSError as e:
        raise ConfigError([("", f"cannot read trace: {e}")], source=spec) from e
    if EVENT in head:
        return "records"
    first = head.lstrip()[:1]
    if first in "[{" and '"t_s"' in head:
        return "points"
    return "requests"


def _columns(text: str | None) -> dict[str, str]:
    out = {}
    for kv in filter(None, (text or "").split(",")):
        k, sep, v = kv.partition("=")
        if not sep:
            raise ConfigError([("--columns", f"{kv!r}: write field=column, e.g. time=TIMESTAMP,prompt=ContextTokens")],
                              source="--columns")
        out[k.strip()] = v.strip()
    return out


def replay_requests(trace: str, config: Path | None, model: str | None, *, policies: list[Path] = (),  # type: ignore[assignment]
                    serve_defaults: list[str] = (), slo: str | None = None, attainment: float | None = None,  # type: ignore[assignment]
                    latency: str | None = None, columns: str | None = None, fmt: str | None = None, seed: int = 0,
                    cold_start_s: float | None = None, request_timeout_s: float | None = None,
                    out: Path | None = None, progress: Any = None) -> tuple[str, list[dict[str, Any]]]:
    """Replay a request trace against the model's policy, `policies` and Serve's default; return (latency line, rows)."""
    from serve_app.autoscaling.compare import Slo, compare
    from serve_app.autoscaling.runners import runner_for
    from serve_app.autoscaling.session import open_session, policy_from_file, serve_default_policy
    from serve_app.autoscaling.traces import load_requests

    s = open_session(config, model, latency=latency, seed=seed, cold_start_s=cold_start_s,
                     request_timeout_s=request_timeout_s)
    req = load_requests(trace, columns=_columns(columns), fmt=fmt).for_model(s.model.name if _named(trace) else None)
    runs = [runner_for(f"active ({s.policy.policy})", s.policy)]
    runs += [runner_for(f"shadow {n}", s.policy.shadow(n)) for n in s.policy.shadow_policies]  # shadows replay too
    runs += [policy_from_file(p, s.policy) for p in policies]
    runs += [serve_default_policy(spec, s.policy) for spec in serve_defaults]
    goal = Slo.parse(slo, attainment=attainment) if slo else None
    results, rows = compare(req, runs, s.setup, slo=goal, progress=progress)
    if out is not None:
        from serve_app.autoscaling.report import write_report

        notes = [s.setup.latency.describe(), f"trace: {req.source}, {len(req):,} requests over {req.duration_s:,.0f} s"]
        if goal:
            notes.append(f"SLO: {goal}")
        write_report(out, results, rows, title=f"replay of {req.source} for {s.model.name}", notes=notes)
    return s.setup.latency.describe(), rows


def _named(trace: str) -> bool:
    return not trace.startswith("gen:")


def rerun_records(path: Path, config: Path | None, model: str | None,
                  policies: list[Path] = ()) -> list[tuple[str, list[DecisionRecord]]]:  # type: ignore[assignment]
    """Counterfactual replay of an audit trail: (policy name, its decision records) for the model's policy and each file."""
    from serve_app.autoscaling.cli import load_records
    from serve_app.autoscaling.replay import observations_from_records, rerun
    from serve_app.autoscaling.session import open_session, policy_from_file

    s = open_session(config, model)
    records = load_records(path, model=s.model.name) or load_records(path)
    obs = observations_from_records(records)
    out = [("recorded", records)]
    # What each shadow answered live, as records with its target (its clamps are names only).
    names = sorted({sh.name for r in records for sh in r.shadows})
    for name in names:
        recs = [r.model_copy(update={"target_replicas": sh.target_replicas, "shadows": (),
                                     "direction": _direction(r.previous_replicas, sh.target_replicas)})
                for r in records for sh in r.shadows if sh.name == name]
        out.append((f"shadow {name} (recorded)", recs))
    runs = [("active", s.policy)] + [(f"shadow {n}", s.policy.shadow(n)) for n in s.policy.shadow_policies]
    runs += [(p.stem, policy_from_file(p, s.policy).config) for p in policies]
    for name, cfg in runs:
        if cfg.policy == "serve_default":
            continue  # Serve's policy has no Decision to record; its recorded shadow answers are above
        out.append((name, [decision_record(d, model=s.model.name) for d in rerun(obs, cfg)]))
    return out


def _direction(before: int, after: int) -> str:
    return "up" if after > before else "down" if after < before else "hold"


@cli.command("replay")
def replay_cmd(
    trace: str = typer.Argument(..., help="Request log (CSV/JSONL: fleetserve, Azure, BurstGPT, Mooncake, Locust requests.jsonl), "
                                "gen:poisson|diurnal|ramp|bursty,key=value,..., an audit trail, or load points (t_s)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config YAML; default $FLEETSERVE_CONFIG or the embedded one."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose deployment to replay; needed when the config has several."),
    policy: list[Path] = typer.Option([], "--policy", help="Another policy to compare: a YAML autoscaling: block (repeatable)."),
    serve_default: list[str] = typer.Option([], "--serve-default", help="Serve's default policy, e.g. target=4[,upscale_delay_s=30] (repeatable)."),
    slo: Optional[str] = typer.Option(None, "--slo", help="TTFT objective, e.g. ttft_p95_ms=500."),
    attainment: Optional[float] = typer.Option(None, "--attainment", min=0, max=1, help="Share of requests within the SLO; default from the percentile."),
    latency: Optional[str] = typer.Option(None, "--latency", help="sim (the model's sim block), roofline:MODEL@ACCEL[,tp=4], or fit:results.json."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Column mapping, e.g. time=TIMESTAMP,prompt=ContextTokens,output=GeneratedTokens,time_unit=datetime."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force a trace format (fleetserve, azure, burstgpt, mooncake, locust, jsonl)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the router's random choices and cold-start draws."),
    cold_start_s: Optional[float] = typer.Option(None, "--cold-start-s", min=0, help="Seconds before a new replica serves; default from the latency model."),
    request_timeout_s: Optional[float] = typer.Option(None, "--request-timeout-s", min=0, help="Drop requests queued at the handle longer than this."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write summary.json, replicas.png and report.html here."),
    startup_s: float = typer.Option(60.0, "--startup-s", min=0, help="Load points only: seconds from asking for a replica to it serving."),
    tick_s: Optional[float] = typer.Option(None, "--tick-s", min=0.001, help="Load points only: decision interval."),
    slots_per_replica: Optional[int] = typer.Option(None, "--slots-per-replica", min=1, help="Load points only: requests one replica runs at once."),
    show_all: bool = typer.Option(False, "--all", help="Decisions: show holds too, not only changes and clamps."),
    why: bool = typer.Option(False, "--why", help="Decisions: show each clamp's reason under its row."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (summaries, or decision records as JSONL)."),
) -> None:
    """Replay traffic against policies: TTFT, SLO, GPU-hours per policy (request logs), or decisions (audit trails, load points)."""
    try:
        kind = trace_kind(trace)
        if kind == "points":
            records = replay_records(trace, config, model, startup_s=startup_s, tick_s=tick_s, slots_per_replica=slots_per_replica)
            echo_records(records, as_json=as_json, why=why, changes_only=not show_all)
            return
        if kind == "records":
            for name, recs in rerun_records(Path(trace), config, model, policy):
                if as_json:
                    for r in recs:
                        typer.echo(json.dumps({"policy": name, **r.to_json_dict()}, separators=(",", ":")))
                else:
                    typer.echo(f"== {name}: {summarize(recs)}")
            return
        n_policies = 1 + len(policy) + len(serve_default)
        with typer.progressbar(length=n_policies, label="replaying", file=None) as bar:
            line, rows = replay_requests(trace, config, model, policies=policy, serve_defaults=serve_default, slo=slo,
                                         attainment=attainment, latency=latency, columns=columns, fmt=fmt, seed=seed,
                                         cold_start_s=cold_start_s, request_timeout_s=request_timeout_s, out=out,
                                         progress=lambda _name: bar.update(1))
    except (ConfigError, KeyError, ValueError, OSError) as e:
        typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
        raise typer.Exit(1) from e
    from serve_app.autoscaling.compare import format_table

    if as_json:
        typer.echo(json.dumps({"latency_model": line, "policies": rows}, indent=1))
        return
    typer.echo(line)
    typer.echo(format_table(rows))
    if out is not None:
        typer.echo(f"report: {out / 'report.html'}")


@cli.command("tune")
def tune_cmd(
    trace: str = typer.Argument(..., help="Request log or gen: spec, as for replay."),
    slo: str = typer.Option(..., "--slo", help="TTFT objective, e.g. ttft_p95_ms=500."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config YAML."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to tune."),
    attainment: Optional[float] = typer.Option(None, "--attainment", min=0, max=1, help="Share of requests within the SLO."),
    trials: int = typer.Option(60, "--trials", min=1, help="Replays per policy kind."),
    latency: Optional[str] = typer.Option(None, "--latency", help="As for replay."),
    columns: Optional[str] = typer.Option(None, "--columns", help="As for replay."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of the replay."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also tune Serve's default policy on the same SLO."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write tune.json and the winning autoscaling.yaml here."),
) -> None:
    """Find the policy settings with the least GPU-hours that meet the SLO; print the frontier and the YAML block."""
    from serve_app.autoscaling.compare import Slo
    from serve_app.autoscaling.session import open_session
    from serve_app.autoscaling.traces import load_requests
    from serve_app.autoscaling.tune import tune, yaml_block

    try:
        s = open_session(config, model, seed=seed)
        req = load_requests(trace, columns=_columns(columns)).for_model(s.model.name if _named(trace) else None)
        goal = Slo.parse(slo, attainment=attainment)
        kinds = ["queue_depth"] + (["serve_default"] if baseline else [])
        results = {}
        typer.echo(s.setup.latency.describe())
        for kind in kinds:
            with typer.progressbar(length=trials, label=f"tuning {kind}") as bar:
                results[kind] = tune(req, s.policy, s.setup, goal, kind=kind, trials=trials, seed=seed,  # type: ignore[arg-type]
                                     progress=lambda _i, _t: bar.update(1))
    except (ConfigError, KeyError, ValueError, OSError) as e:
        typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
        raise typer.Exit(1) from e
    dump: dict[str, Any] = {"slo": str(goal), "trace": req.source, "latency_model": s.setup.latency.describe()}
    for kind, r in results.items():
        typer.echo(f"\n{kind}: frontier (GPU-hours -> attainment)")
        for t in r.frontier:
            typer.echo(f"  {t.gpu_hours:8.3f} GPU-h  {t.attainment:.2%}  TTFT p95 {t.ttft_p95_ms} ms" + ("  *" if t is r.best else ""))
        if r.best is None:
            typer.echo(f"  no trial met {goal}")
        else:
            typer.echo(f"  best: {r.best.gpu_hours:.3f} GPU-h at {r.best.attainment:.2%}")
        dump[kind] = {"best": None if r.best is None else r.best.summary | {"config": r.best.config.model_dump(mode="json")},
                      "frontier": [{"gpu_hours": t.gpu_hours, "attainment": t.attainment, "ttft_p95_ms": t.ttft_p95_ms}
                                   for t in r.frontier]}
    best = results["queue_depth"].best
    if best is not None:
        block = yaml_block(best.config)
        typer.echo("\n" + block)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "autoscaling.yaml").write_text(block)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tune.json").write_text(json.dumps(dump, indent=1))
