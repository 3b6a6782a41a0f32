"""Search a policy's settings for the least GPU-hours that meet a TTFT SLO on a trace.

Pure (optuna, no Ray). Each trial is one replay (`des.run_replay`) with a candidate
`autoscaling:` block; Optuna's TPE sampler handles the SLO as a constraint (attainment >= target),
so it learns where the feasible region is instead of a penalty blurring it. Serve's default policy
is tuned on the same trace and SLO, so the comparison is against its best setting, not its default.

    tune(trace, base, setup, slo, kind="queue_depth")  -> TuneResult(best, trials, frontier)
    frontier: the trials no other beats on both GPU-hours and attainment
    yaml_block(best.config): the winning `autoscaling:` block
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import yaml

from serve_app.autoscaling.compare import Slo, summarize
from serve_app.autoscaling.des import ReplaySetup, run_replay
from serve_app.autoscaling.runners import runner_for
from serve_app.autoscaling.traces import RequestTrace
from serve_app.schema import AutoscalingConfig

__all__ = ["Trial", "TuneResult", "tune", "yaml_block", "search_space"]

Kind = Literal["queue_depth", "serve_default"]


@dataclass(frozen=True)
class Trial:
    """One candidate: its settings, its cost and its attainment."""

    number: int
    config: AutoscalingConfig
    gpu_hours: float
    attainment: float
    ttft_p95_ms: float | None
    feasible: bool
    summary: dict[str, Any]


@dataclass(frozen=True)
class TuneResult:
    """All trials, the cheapest feasible one (None if no trial met the SLO) and the cost/SLO frontier."""

    kind: Kind
    slo: Slo
    trials: tuple[Trial, ...]
    best: Trial | None
    frontier: tuple[Trial, ...]


def search_space(trial: Any, kind: Kind, base: AutoscalingConfig, max_ongoing: int, *,
                 metrics: tuple[str, ...] = ("requests", "tokens")) -> dict[str, Any]:
    """Suggest one candidate's settings (the fields tuned; the bounds' maximum and the metric windows stay).

    The queue-depth space includes its signal, one of `metrics`: waiting requests or waiting prompt tokens.
    """
    hi_min = max(base.min_replicas, min(base.max_replicas, max(1, base.max_replicas // 2)))
    p: dict[str, Any] = {"min_replicas": trial.suggest_int("min_replicas", base.min_replicas, hi_min)}
    if kind == "serve_default":
        p["serve_target_ongoing_requests"] = trial.suggest_float("serve_target_ongoing_requests", 1.0, float(max_ongoing), log=True)
        p["upscale_stabilization_s"] = trial.suggest_float("upscale_stabilization_s", 0.0, 60.0)
        p["downscale_stabilization_s"] = trial.suggest_float("downscale_stabilization_s", 5.0, 900.0, log=True)
        return p
    # Only the chosen metric's target is searched: the other one is unused (a request queued at a
    # handle counts as the token target / the request target, so for `tokens` the request target
    # stays its default). Suggesting both spent the TPE budget on a dimension that changes nothing.
    p["metric"] = trial.suggest_categorical("metric", list(metrics))
    if p["metric"] == "requests":
        p["target_queue_per_replica"] = trial.suggest_float("target_queue_per_replica", 0.25, 64.0, log=True)
    else:
        p["target_waiting_tokens_per_replica"] = trial.suggest_int("target_waiting_tokens_per_replica", 256, 262144, log=True)
    p["upscale_stabilization_s"] = trial.suggest_float("upscale_stabilization_s", 0.0, 60.0)
    p["downscale_stabilization_s"] = trial.suggest_float("downscale_stabilization_s", 5.0, 900.0, log=True)
    p["upscale_cooldown_s"] = trial.suggest_float("upscale_cooldown_s", 0.0, 60.0)
    p["downscale_cooldown_s"] = trial.suggest_float("downscale_cooldown_s", 0.0, 300.0)
    p["max_step_up"] = trial.suggest_int("max_step_up", 1, 16)
    p["max_step_down"] = trial.suggest_int("max_step_down", 1, 8)
    p["max_step_down_percent"] = trial.suggest_float("max_step_down_percent", 0.0, 100.0)
    p["panic_threshold"] = trial.suggest_float("panic_threshold", 1.0, 10.0)
    return p


def tune(trace: RequestTrace, base: AutoscalingConfig, setup: ReplaySetup, slo: Slo, *, kind: Kind = "queue_depth",
         trials: int = 60, seed: int = 0, progress: Callable[[int, Trial], None] | None = None,
         metrics: tuple[str, ...] = ("requests", "tokens")) -> TuneResult:
    """Run `trials` replays chosen by Optuna's TPE; return every trial, the best and the frontier.

    metrics: the queue-depth signals searched (one of them alone tells what the other one is worth).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done: list[Trial] = []
    fixed = base.model_dump(exclude={"serve_target_ongoing_requests", "initial_replicas", "idle_timeout_s"})

    def objective(t: Any) -> float:
        params = search_space(t, kind, base, setup.max_ongoing_requests, metrics=metrics)
        cfg = AutoscalingConfig.model_validate({**fixed, **params, "policy": kind,
                                                "idle_timeout_s": base.idle_timeout_s if params["min_replicas"] == 0 else None})
        r = run_replay(trace, runner_for(f"{kind}#{t.number}", cfg), setup)
        s = summarize(r, slo)
        trial = Trial(t.number, cfg, r.gpu_hours, s["slo_attainment"], s["ttft_ms"]["p95"], bool(s["slo_met"]), s)
        done.append(trial)
        t.set_constraint("slo", slo.attainment - trial.attainment)  # <= 0: feasible
        if progress:
            progress(len(done), trial)
        return r.gpu_hours

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(15, max(5, trials // 4)))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    feasible = [t for t in done if t.feasible]
    best = min(feasible, key=lambda t: (t.gpu_hours, -t.attainment)) if feasible else None
    return TuneResult(kind, slo, tuple(done), best, _frontier(done))


def _frontier(trials: list[Trial]) -> tuple[Trial, ...]:
    out: list[Trial] = []
    best_att = -math.inf
    for t in sorted(trials, key=lambda t: (t.gpu_hours, -t.attainment)):
        if t.attainment > best_att + 1e-12:
            out.append(t)
            best_att = t.attainment
    return tuple(out)


def yaml_block(cfg: AutoscalingConfig, *, keys: tuple[str, ...] | None = None) -> str:
    """Render the `autoscaling:` block of a model, with only the fields that differ from the defaults (or `keys`)."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    default = AutoscalingConfig(policy=cfg.policy).model_dump(mode="json")
    keep = {k: _round(v) for k, v in data.items() if (keys and k in keys) or default.get(k) != v or k in ("min_replicas", "max_replicas")}
    return yaml.safe_dump({"autoscaling": keep}, sort_keys=False)


def _round(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) else v
