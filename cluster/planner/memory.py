"""Memory math: weights by format, KV cache per token, and what one GPU of a layout holds.

Units: bytes everywhere (GB = 1e9 bytes only in reports, GiB for device memory). Mirrors vLLM:
KV heads are split over TP ranks and replicated when TP exceeds them; layers are split over PP
stages as `vllm.distributed.utils.get_pp_indices` does; the KV cache gets what remains of
`gpu_memory_utilization` x device memory after weights, the profiled activation peak and
runtime buffers, and the replica holds as many tokens as its tightest stage allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.planner.errors import PlannerError
from cluster.planner.models import ModelSpec, param_counts
from cluster.planner.quant import Quantization
from cluster.planner.shapes import Split, Workload
from serve_app.schema import AcceleratorSpec

__all__ = [
    "StageMemory", "ReplicaMemory",
    "weight_bytes", "kv_heads_per_gpu", "kv_bytes_per_token", "kv_tokens_per_sequence", "stage_layers", "replica_memory",
]


def weight_bytes(m: ModelSpec, q: Quantization, *, nominal: bool = False) -> float:
    """Bytes of the whole checkpoint in format `q`.

    nominal=True gives the rule of thumb people quote: every parameter at `q.nominal_bits`.
    Otherwise linear weights take `q.bits_per_weight` (scales included), embeddings
    `q.embedding_bits`, norms/biases/routers `q.small_bits`.
    """
    c = param_counts(m)
    if nominal:
        return c.total * q.nominal_bits / 8
    return (c.linear * q.bits_per_weight + c.embeddings * q.embedding_bits + c.small * q.small_bits) / 8


def kv_heads_per_gpu(m: ModelSpec, tp: int) -> int:
    """KV heads one TP rank holds: split when tp divides them, else one replicated head (vLLM)."""
    return max(1, m.num_key_value_heads // tp)


def kv_bytes_per_token(m: ModelSpec, *, kv_bytes: float = 2.0, tp: int = 1, layers: int | None = None) -> float:
    """KV-cache bytes one token takes on one GPU: layers x kv_heads x head_dim x 2 (K and V) x kv_bytes.

    With tp=1 and layers=None this is the whole model's figure.
    """
    n = m.num_hidden_layers if layers is None else layers
    return n * kv_heads_per_gpu(m, tp) * m.head_dim * 2 * kv_bytes


def kv_tokens_per_sequence(m: ModelSpec, context_tokens: int) -> int:
    """KV slots a sequence of `context_tokens` holds: capped by a sliding window."""
    return min(context_tokens, m.sliding_window) if m.sliding_window else context_tokens


def stage_layers(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers per pipeline stage, as vLLM splits them: the remainder goes to the stages before the last."""
    if not 1 <= pp <= num_layers:
        raise PlannerError(f"pipeline size {pp} must lie in 1..num_hidden_layers={num_layers}")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return tuple(parts)


@dataclass(frozen=True)
class StageMemory:
    """One GPU of one pipeline stage (all TP ranks of a stage hold the same)."""

    layers: int
    weights: float
    activations: float
    reserve: float
    budget: float  # gpu_memory_utilization x device memory
    kv_bytes_per_token: float

    @property
    def kv_budget(self) -> float:
        """Bytes left for the KV cache (negative when weights do not fit)."""
        return self.budget - self.weights - self.activations - self.reserve

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache this GPU can hold."""
        return max(0, math.floor(self.kv_budget / self.kv_bytes_per_token)) if self.kv_bytes_per_token else 0


@dataclass(frozen=True)
class ReplicaMemory:
    """Memory of every stage of one replica, and what the replica can hold."""

    stages: tuple[StageMemory, ...]
    tokens_per_sequence: int
    max_num_seqs: int

    @property
    def weights_per_gpu(self) -> float:
        """Weight bytes on the fullest GPU."""
        return max(s.weights for s in self.stages)

    @property
    def weights_fit(self) -> bool:
        """True when every GPU holds its weights, activations and reserve within the budget."""
        return all(s.kv_budget > 0 for s in self.stages)

    @property
    def kv_tokens(self) -> int:
        """KV tokens of the replica: the tightest stage bounds it (every stage stores every token)."""
        return min(s.kv_tokens for s in self.stages)

    @property
    def kv_bytes_per_gpu(self) -> float:
        """KV-cache bytes on the fullest GPU."""
        return max(s.kv_budget for s in self.stages)

    @property
    def max_sequences(self) -> int:
        """Sequences at full context that run at once: KV room, capped by max_num_seqs."""
        return min(self.max_num_seqs, self.kv_tokens // self.tokens_per_sequence)


def replica_memory(m: ModelSpec, q: Quantization, layout: Split, accel: AcceleratorSpec, w: Workload) -> ReplicaMemory:
    """Compute each stage's per-GPU memory for `layout` (no validity checks: see plans.check_layout)."""
    c, tp = param_counts(m), layout.tp
    h, hd, kvh = m.hidden_size, m.head_dim, kv_heads_per_gpu(m, tp)
    bits, small = q.bits_per_weight, q.small_bits
    attn = (2 * h * m.num_attention_heads * hd / tp + 2 * h * kvh * hd) * bits
    dense_layer = attn + c.dense_mlp / tp * bits + c.attention_small * small
    moe_layer = attn + (c.routed_per_moe_layer + c.shared_expert) / tp * bits + (c.attention_small + c.router_small) * small
    per_layer = (c.dense_layers * dense_layer + c.moe_layers * moe_layer) / m.num_hidden_layers / 8
    table = m.vocab_size * h / tp * q.embedding_bits / 8  # vocab-parallel embedding or lm_head shard

    inner = max(m.intermediate_size if c.dense_layers else 0,
                m.num_experts_per_tok * m.moe_intermediate_size + m.shared_expert_intermediate_size)
    act_per_token = q.activation_bytes * (4 * h + 3 * inner / tp)
    logits = w.max_num_seqs * m.vocab_size * 4  # fp32 logits of a full batch on the last stage
    kv_b = w.kv_cache_bytes if w.kv_cache_bytes is not None else q.activation_bytes
    budget = accel.memory_bytes * w.gpu_memory_utilization
    parts = stage_layers(m.num_hidden_layers, layout.pp)
    stages = []
    for i, n in enumerate(parts):
        first, last = i == 0, i == len(parts) - 1
        # A tied lm_head still needs its own copy when it lives on another stage than the embedding.
        tables = (1 if first else 0) + (1 if last and (not m.tie_word_embeddings or not first) else 0)
        stages.append(StageMemory(
            layers=n,
            weights=n * per_layer + tables * table + (h * small / 8 if last else 0),
            activations=w.max_num_batched_tokens * act_per_token + (logits if last else 0),
            reserve=w.runtime_reserve_gib * 2**30,
            budget=budget,
            kv_bytes_per_token=kv_bytes_per_token(m, kv_bytes=kv_b, tp=tp, layers=n),
        ))
    return ReplicaMemory(tuple(stages), kv_tokens_per_sequence(m, w.context_tokens), w.max_num_seqs)
