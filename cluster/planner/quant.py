"""Weight formats: how many bits each kind of parameter takes, scales and zero-points included.

`nominal_bits` is the figure people quote ("4-bit"); `bits_per_weight` is what a checkpoint
really stores per quantized weight. Block layouts behind the effective figures:

- AWQ / GPTQ, group 128: 4-bit weights + an fp16 scale and a 4-bit zero per 128 inputs
  = 4 + 20/128 = 4.156 bits. Embeddings and lm_head stay 16-bit.
- NF4 (bitsandbytes, QLoRA): 4-bit codes + an fp32 absmax per 64 weights = 4.5 bits.
  Double quantization stores the absmax as 8 bits with one fp32 per 256 blocks:
  4 + 8/64 + 32/(64*256) = 4.127 bits, i.e. 0.373 bit saved per parameter.
- GGUF (llama.cpp), bytes per block / weights per block: q8_0 34/32, q4_0 18/32, q5_0 22/32,
  q2_k 84/256, q3_k 110/256, q4_k 144/256, q5_k 176/256, q6_k 210/256. GGUF quantizes the
  embeddings too; mixed presets (q4_k_m, ...) mix these types per tensor and are not listed.
- fp8 / int8: per-tensor or per-channel scales, negligible; lm_head and embeddings stay 16-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.planner.errors import PlannerError

__all__ = ["QUANTIZATIONS", "Quantization", "quantization"]


@dataclass(frozen=True)
class Quantization:
    """One weight format."""

    name: str
    nominal_bits: float
    """The bit width people quote for the format."""
    bits_per_weight: float
    """Effective bits per quantized (linear-layer) weight, scales and zero-points included."""
    embedding_bits: float = 16.0
    """Bits per embedding / lm_head weight (16 unless the format quantizes them too)."""
    small_bits: float = 16.0
    """Bits per norm, bias and router weight."""
    activation_bytes: int = 2
    """Bytes per activation element (and default KV-cache element)."""
    group_size: int | None = None
    """Inputs sharing one scale; a tensor-parallel shard of a row-parallel layer must hold whole groups."""
    aliases: tuple[str, ...] = ()
    vllm_quantization: str | None = None
    """The value of vLLM's `quantization` engine arg for this format (None: plain dtype)."""


def _gguf(kind: str, block_bytes: int, block_weights: int) -> Quantization:
    bpw = block_bytes * 8 / block_weights
    return Quantization(name=f"gguf-{kind}", nominal_bits=float(kind[1]), bits_per_weight=bpw, embedding_bits=bpw,
                        aliases=(kind,), vllm_quantization="gguf")


QUANTIZATIONS: dict[str, Quantization] = {q.name: q for q in (
    Quantization("fp32", 32, 32, embedding_bits=32, small_bits=32, activation_bytes=4, aliases=("float32",)),
    Quantization("bf16", 16, 16, aliases=("bfloat16", "auto", "16-bit")),
    Quantization("fp16", 16, 16, aliases=("float16", "half")),
    Quantization("fp8", 8, 8, aliases=("float8", "fp8_e4m3"), vllm_quantization="fp8"),
    Quantization("int8", 8, 8, aliases=("w8a8", "w8a16", "8-bit")),
    Quantization("awq", 4, 4 + 20 / 128, group_size=128, aliases=("int4-awq", "int4", "4-bit", "awq_marlin"),
                 vllm_quantization="awq"),
    Quantization("gptq", 4, 4 + 20 / 128, group_size=128, aliases=("int4-gptq", "gptq_marlin"), vllm_quantization="gptq"),
    Quantization("nf4", 4, 4 + 32 / 64, aliases=("bnb-nf4", "bitsandbytes"), vllm_quantization="bitsandbytes"),
    Quantization("nf4-dq", 4, 4 + 8 / 64 + 32 / (64 * 256), aliases=("nf4-double-quant", "qlora"),
                 vllm_quantization="bitsandbytes"),
    _gguf("q2_k", 84, 256),
    _gguf("q3_k", 110, 256),
    _gguf("q4_0", 18, 32),
    _gguf("q4_k", 144, 256),
    _gguf("q5_0", 22, 32),
    _gguf("q5_k", 176, 256),
    _gguf("q6_k", 210, 256),
    _gguf("q8_0", 34, 32),
)}


def quantization(name: str) -> Quantization:
    """Find a weight format by name or alias, case-insensitively. Raises PlannerError listing the names."""
    key = name.strip().lower()
    for q in QUANTIZATIONS.values():
        if key == q.name or key in q.aliases:
            return q
    raise PlannerError(f"quantization {name!r} is unknown; use one of {', '.join(QUANTIZATIONS)}")
