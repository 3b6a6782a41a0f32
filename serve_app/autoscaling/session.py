"""What `autoscaler replay` and `autoscaler tune` share: a model's config -> policies, latency, setup.

Pure. Resolves, once, everything a request-level replay needs from the deploy config and the
command's options, so the commands stay thin and tests call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import ValidationError

from serve_app.autoscaling.des import ReplaySetup
from serve_app.autoscaling.latency import LatencyModel, from_results, from_roofline, from_sim
from serve_app.autoscaling.runners import QueueDepthRunner, ServeDefaultRunner, runner_for
from serve_app.schema import AppConfig, AutoscalingConfig, ModelConfig, load_config
from serve_app.errors import ConfigError

__all__ = ["Session", "open_session", "policy_from_file", "serve_default_policy", "latency_for"]


@dataclass(frozen=True)
class Session:
    """One model of one config, ready to replay."""

    model: ModelConfig
    setup: ReplaySetup

    @property
    def policy(self) -> AutoscalingConfig:
        """The model's own (active) autoscaling block."""
        return self.model.autoscaling


def pick_model(app: AppConfig, model: str | None) -> ModelConfig:
    """Return `model`'s deployment, or the only one; KeyError naming the choices."""
    names = ", ".join(m.name for m in app.models)
    if model is None:
        if len(app.models) != 1:
            raise KeyError(f"the config serves {len(app.models)} models; pick one with --model: {names}")
        return app.models[0]
    try:
        return app.model(model)
    except KeyError:
        raise KeyError(f"no model {model!r} in the config; known: {names}") from None


def latency_for(m: ModelConfig, spec: str | None) -> LatencyModel:
    """Resolve --latency: sim (default: the model's sim block), roofline:MODEL@ACCEL[,tp=N,pp=N,ep=N], fit:results.json."""
    gpus = 1 if m.parallelism == "auto" else m.parallelism.world_size
    sim = from_sim(m.sim, gpus_per_replica=gpus, calibrated=m.sim == type(m.sim)())
    if m.engine == "vllm" and "max_num_seqs" in m.engine_args:  # the batch the real engine runs
        sim = sim.with_(max_num_seqs=int(m.engine_args["max_num_seqs"]))
    if spec is None or spec == "sim":
        return sim
    kind, _, rest = spec.partition(":")
    if kind == "fit":
        return from_results(rest, base=sim)
    if kind == "roofline":
        head, *opts = rest.split(",")
        name, sep, accel = head.partition("@")
        if not sep:
            raise ConfigError([("--latency", f"{spec!r}: write roofline:MODEL@ACCELERATOR[,tp=4,pp=1,ep=1]")], source="latency")
        kw: dict[str, Any] = {}
        for o in opts:
            k, _, v = o.partition("=")
            if k not in ("tp", "pp", "ep", "context_tokens", "prompt_tokens", "max_num_seqs", "cold_start_s", "quant"):
                raise ConfigError([("--latency", f"unknown option {k!r} in {spec!r}")], source="latency")
            kw[k] = v if k == "quant" else float(v) if k == "cold_start_s" else int(v)
        return from_roofline(name, accel, **kw)
    raise ConfigError([("--latency", f"{spec!r} is not sim, roofline:MODEL@ACCEL or fit:results.json")], source="latency")


def open_session(config_path: str | Path | None, model: str | None, *, latency: str | None = None, seed: int = 0,
                 cold_start_s: float | None = None, cold_start_samples: Sequence[float] = (),
                 request_timeout_s: float | None = None) -> Session:
    """Load the config and resolve the model's replay setup (limits from the config, timing from `latency`)."""
    m = pick_model(load_config(config_path), model)
    lat = latency_for(m, latency)
    if cold_start_s is not None:
        lat = lat.with_(cold_start_s=cold_start_s)
    setup = ReplaySetup(
        latency=lat, max_ongoing_requests=m.max_ongoing_requests, max_queued_requests=m.limits.max_queued_requests,
        request_timeout_s=request_timeout_s, graceful_shutdown_timeout_s=m.graceful_shutdown_timeout_s,
        cold_start_samples_s=tuple(cold_start_samples), seed=seed)
    return Session(m, setup)


def policy_from_file(path: str | Path, base: AutoscalingConfig) -> QueueDepthRunner | ServeDefaultRunner:
    """Read a policy YAML (an `autoscaling:` block, or its fields at the top); unset fields keep the model's bounds."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([("", f"cannot read policy file: {e}")], source=str(p)) from e
    block = data.get("autoscaling", data) if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise ConfigError([("", "expected a mapping (an autoscaling: block)")], source=str(p))
    bounds = {"min_replicas": base.min_replicas, "max_replicas": base.max_replicas}
    return runner_for(p.stem, _validate({**bounds, **block}, str(p)))


def serve_default_policy(spec: str, base: AutoscalingConfig) -> ServeDefaultRunner:
    """Build Serve's default policy from `target=4[,upscale_delay_s=..,downscale_delay_s=..]` with the model's bounds."""
    names = {"target": "serve_target_ongoing_requests", "upscale_delay_s": "upscale_stabilization_s",
             "downscale_delay_s": "downscale_stabilization_s", "min_replicas": "min_replicas", "max_replicas": "max_replicas"}
    fields: dict[str, Any] = {"policy": "serve_default", "min_replicas": base.min_replicas, "max_replicas": base.max_replicas,
                              "metrics_push_interval_s": base.metrics_push_interval_s,
                              "metrics_look_back_s": base.metrics_look_back_s,
                              "upscale_stabilization_s": 30.0, "downscale_stabilization_s": 600.0}  # Serve's defaults
    for kv in filter(None, spec.split(",")):
        k, sep, v = kv.partition("=")
        if not sep or k.strip() not in names:
            raise ConfigError([("--serve-default", f"{kv!r}: use {', '.join(names)} as key=value")], source="serve default")
        try:
            fields[names[k.strip()]] = float(v) if k.strip() not in ("min_replicas", "max_replicas") else int(v)
        except ValueError:
            raise ConfigError([("--serve-default", f"{kv!r}: {v!r} is not a number")], source="serve default") from None
    if base.min_replicas == 0:
        fields["idle_timeout_s"] = base.scale_to_zero_after_s
    cfg = _validate(fields, "--serve-default")
    return ServeDefaultRunner(f"serve_default(target={cfg.serve_target_ongoing_requests or 2:g})", cfg)


def _validate(fields: dict[str, Any], source: str) -> AutoscalingConfig:
    try:
        return AutoscalingConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError([(".".join(str(x) for x in err["loc"]) or "autoscaling", err["msg"])
                           for err in e.errors(include_url=False)], source=source) from e
