"""Sweep strategies: short names for a model's layout, turned into re-validated AppConfigs.

Pure: pydantic and yaml only (no ray, vllm or locust). A strategy overrides one model of the one
config; everything else (source, engine_args, placement, env) stays the config's.

    "tp2-pp2:enforce_eager=false"
      ├─ layout parts, joined by "-":  tpN  ppN  epN  replicas=N   (missing parts are 1)
      └─ after ":", engine_args overrides  key=value[,key=value...]   (values parsed as YAML)

`epN` alone means `tpN-epN`: the config requires expert == tensor (vLLM shards experts over
the tensor-parallel group). Replicas are fixed (min = max = N): autoscaling during a ladder
step would mix two layouts in one measurement.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import Field

from loadtest.errors import LoadTestError
from cluster.planner.layout import plan_layout
from serve_app.schema import AppConfig, ModelConfig, parse_config
from serve_app.schema import Frozen

__all__ = ["Strategy", "parse_strategy", "apply_strategy", "select_model", "cpu_refusal", "GRAMMAR"]

GRAMMAR = ("parts tpN, ppN, epN, replicas=N joined by '-' (e.g. tp2-pp2, replicas=2), "
           "then optionally ':key=value,...' engine_args overrides (e.g. pp2:enforce_eager=false)")
_PART = re.compile(r"^(?:(tp|pp|ep)(\d+)|(replicas)=(\d+))$")
_FIELDS = {"tp": "tensor", "pp": "pipeline", "ep": "expert", "replicas": "replicas"}


class Strategy(Frozen):
    """One layout of the swept model, as parsed from its name."""

    name: str = Field(..., min_length=1, description="The strategy as written, e.g. tp2-pp2 or pp2:enforce_eager=false.")
    tensor: int = Field(1, ge=1, description="Tensor-parallel size (tpN).")
    pipeline: int = Field(1, ge=1, description="Pipeline-parallel size (ppN).")
    expert: int = Field(1, ge=1, description="Expert-parallel size (epN); 1 = off.")
    replicas: int = Field(1, ge=1, description="Fixed replica count (replicas=N).")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="engine_args overrides after ':'.")

    @property
    def slug(self) -> str:
        """File- and Serve-app-safe form of the name (tp2-pp2, pp2_enforce_eager-false)."""
        return re.sub(r"[^a-z0-9_.-]+", "-", self.name.lower().replace(":", "_")).strip("-") or "strategy"


def parse_strategy(text: str) -> Strategy:
    """Parse a strategy name; raise LoadTestError naming the bad part and the grammar."""
    name = text.strip()
    head, _, tail = name.partition(":")
    values: dict[str, int] = {}
    for part in head.split("-"):
        m = _PART.match(part.strip().lower())
        if not m:
            raise LoadTestError(f"strategy {name!r}: unknown part {part!r}; use {GRAMMAR}")
        key, n = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if _FIELDS[key] in values:
            raise LoadTestError(f"strategy {name!r}: {key} is given twice; give each of tp, pp, ep, replicas once")
        if int(n) < 1:
            raise LoadTestError(f"strategy {name!r}: {part} must be at least 1")
        values[_FIELDS[key]] = int(n)
    if values.get("expert", 1) > 1:
        values.setdefault("tensor", values["expert"])  # ep2 == tp2-ep2; a clash is the config's to report
    overrides: dict[str, Any] = {}
    if tail.strip():
        for item in tail.split(","):
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise LoadTestError(f"strategy {name!r}: engine_args override {item!r} is not key=value "
                                    f"(e.g. {head}:enforce_eager=false,max_num_seqs=16)")
            try:
                overrides[key.strip()] = yaml.safe_load(raw.strip()) if raw.strip() else ""
            except yaml.YAMLError:
                overrides[key.strip()] = raw.strip()
    return Strategy(name=name, engine_args=overrides, **values)


def select_model(config: AppConfig, name: str | None) -> ModelConfig:
    """Return the config's model `name`, or its only model when `name` is None."""
    if name is None:
        if len(config.models) == 1:
            return config.models[0]
        raise LoadTestError("the config serves " + ", ".join(m.name for m in config.models)
                            + "; pick the model to sweep with --model NAME")
    try:
        return config.model(name)
    except KeyError:
        raise LoadTestError(f"--model {name}: not in the config (models[].name are "
                            f"{', '.join(m.name for m in config.models)})") from None


def apply_strategy(config: AppConfig, model: str | None, strategy: Strategy) -> AppConfig:
    """Return an AppConfig serving only `model`, laid out as `strategy`, re-validated by the config's rules.

    Raises ConfigError whose source is the strategy and whose problems name the field, e.g.
    `models[0].parallelism.tensor: tensor=3 does not divide num_attention_heads=4; use one of [1, 2, 4]`.
    """
    base = select_model(config, model)
    changed = base.model_dump()
    changed["parallelism"] = {"tensor": strategy.tensor, "pipeline": strategy.pipeline, "expert": strategy.expert}
    changed["engine_args"] = {**base.engine_args, **strategy.engine_args}
    changed["autoscaling"].update(min_replicas=strategy.replicas, max_replicas=strategy.replicas, initial_replicas=None)
    data = config.model_dump()
    data["api_keys"] = [k.get_secret_value() for k in config.api_keys]
    data["models"] = [changed]
    # From plain data again: parse_config runs every field and cross-field rule on the changed model.
    return parse_config(data, source=f"strategy {strategy.name!r}")


def cpu_refusal(model: ModelConfig) -> str | None:
    """Say why `model` (a strategy's) cannot run on vLLM's CPU platform, or None when it can (or is on GPUs).

    Both are vLLM 0.32 CPU limits measured on this stack: expert parallel segfaults in the CPU
    fused-MoE kernel; pipeline parallel fails in eager mode (AssertionError on intermediate_tensors).
    """
    if not model.placement.on_cpu or model.engine != "vllm":
        return None
    par = plan_layout(model).parallelism  # on the CPU, auto is planned without a cluster
    if par.expert > 1:
        return (f"expert={par.expert}: expert parallel segfaults on vLLM's CPU platform (cpu_fused_moe); the layout "
                "is validated and planned (--dry-run) but runs only on GPU placements (placement.accelerator: GPU)")
    if par.pipeline > 1 and model.engine_args.get("enforce_eager"):
        return (f"pipeline={par.pipeline} with engine_args.enforce_eager=true: vLLM's CPU pipeline parallel fails in "
                "eager mode (AssertionError on intermediate_tensors); append ':enforce_eager=false' to the strategy "
                "(compiled start-up takes ~30-50 s the first time)")
    return None
