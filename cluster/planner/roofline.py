"""Roofline estimates of one replica: prefill is compute-bound, decode bandwidth-bound on active parameters.

Each pipeline stage's step takes max(compute, memory traffic) plus its tensor-parallel
communication (two all-reduces per layer over the TP link; with expert parallelism the MoE
all-reduce becomes a dispatch + combine all-to-all). Stages hand activations to the next
over the node link or the inter-node fabric. Prefill of one prompt pipelines its chunks
over the stages (GPipe-style bubble); decode of one sequence cannot, so a lone sequence
walks every stage per token, while a full batch is split into `pp` micro-batches whose
throughput the slowest stage sets (stage imbalance). Not modeled: CPU/scheduler overhead,
kernel launch gaps, speculative decoding, prefix caching. Numbers rank layouts; they are
not promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.planner.memory import ReplicaMemory, kv_heads_per_gpu, kv_tokens_per_sequence
from cluster.planner.models import ModelSpec, param_counts
from cluster.planner.quant import Quantization
from cluster.planner.shapes import ClusterShape, Split, Workload

__all__ = ["Estimate", "estimate", "COMPUTE_EFFICIENCY", "BANDWIDTH_EFFICIENCY", "LINK_EFFICIENCY", "LINK_LATENCY_S"]

# Fractions of datasheet peaks a serving engine reaches (estimates, shared by every layout so
# that rankings do not depend on them much).
COMPUTE_EFFICIENCY = 0.5
BANDWIDTH_EFFICIENCY = 0.8
LINK_EFFICIENCY = 0.7
# Fixed cost of one collective or send (launch + synchronisation), by link.
LINK_LATENCY_S = {"nvlink": 8e-6, "pcie": 25e-6, "fabric": 30e-6}


@dataclass(frozen=True)
class Estimate:
    """Roofline figures of one replica."""

    ttft_s: float
    """Time to first token of a lone prompt of workload.prompt tokens."""
    tpot_s: float
    """Time per output token of a lone sequence (batch 1)."""
    batch: int
    """Sequences decoded together at full load (KV room, capped by max_num_seqs)."""
    tokens_per_s: float
    """Decode throughput of the replica at that batch."""
    itl_at_load_s: float
    """Inter-token latency each sequence sees at that batch."""
    prefill_bubble: float
    """Share of stage-time idle while one prompt's chunks fill and drain the pipeline."""
    stage_imbalance: float
    """Slowest stage / mean stage, in a loaded decode step (1.0 = balanced)."""
    comm_share: float
    """Share of a batch-1 decode step spent communicating (TP collectives and PP sends)."""
    decode_bound: str
    """"memory" or "compute": what limits the slowest stage at full load."""


@dataclass(frozen=True)
class _Link:
    gb_s: float
    latency_s: float

    def send(self, nbytes: float) -> float:
        return self.latency_s + nbytes / (self.gb_s * 1e9 * LINK_EFFICIENCY)

    def all_reduce(self, nbytes: float, n: int) -> float:
        return 0.0 if n == 1 else self.latency_s + 2 * (n - 1) / n * nbytes / (self.gb_s * 1e9 * LINK_EFFICIENCY)

    def all_to_all(self, nbytes: float, n: int) -> float:
        return 0.0 if n == 1 else self.latency_s + (n - 1) / n * nbytes / (self.gb_s * 1e9 * LINK_EFFICIENCY)


class _Replica:
    """Per-stage costs of one layout; all figures per GPU of a stage."""

    def __init__(self, m: ModelSpec, q: Quantization, layout: Split, cluster: ClusterShape, mem: ReplicaMemory):
        self.m, self.q, self.layout, self.mem = m, q, layout, mem
        a, gpn = cluster.accelerator, cluster.gpus_per_node
        self.node_link = _Link(a.interconnect_gb_s, LINK_LATENCY_S[a.interconnect])
        self.fabric = _Link(cluster.fabric_gb_s, LINK_LATENCY_S["fabric"])
        self.tp_link = self.node_link if layout.tp <= gpn else self.fabric
        # Ranks are stage-major; a stage boundary crosses nodes when it falls on a node boundary.
        self.cross = [layout.world > gpn and ((i + 1) * layout.tp) % gpn == 0 for i in range(layout.pp - 1)]
        self.flops = a.bf16_tflops * 1e12 * COMPUTE_EFFICIENCY
        self.bw = a.memory_bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY
        c = param_counts(m)
        tp, bits = layout.tp, q.bits_per_weight / 8
        self.moe_share = c.moe_layers / m.num_hidden_layers
        attn = (2 * m.hidden_size * m.num_attention_heads * m.head_dim / tp
                + 2 * m.hidden_size * kv_heads_per_gpu(m, tp) * m.head_dim)
        dense = (c.dense_layers * (attn + c.dense_mlp / tp) + c.moe_layers * (attn + c.shared_expert / tp)) / m.num_hidden_layers
        self.always_layer = dense * bits  # bytes read per layer whatever the routing
        self.routed_layer = self.moe_share * c.routed_per_moe_layer / tp * bits  # all routed experts of a layer
        self.active_layer = dense + self.moe_share * c.expert * c.experts_per_tok / tp  # params one token runs through
        self.lm_head = m.vocab_size * m.hidden_size / tp
        self.lm_head_bytes = self.lm_head * q.embedding_bits / 8
        self.heads = m.num_attention_heads / tp
        self.act = q.activation_bytes

    def stage(self, i: int, tokens: float, kv_len: float, *, decode: bool) -> tuple[float, float, float]:
        """(compute, memory, communication) seconds of stage i for `tokens` tokens attending over kv_len each."""
        m, st, last = self.m, self.mem.stages[i], i == self.layout.pp - 1
        n = st.layers
        touched = 1.0
        if m.is_moe:  # share of a layer's experts that at least one of the tokens routes to
            touched = 1 - (1 - m.num_experts_per_tok / m.num_experts) ** tokens
        read = n * (self.always_layer + self.routed_layer * touched) + (self.lm_head_bytes if last else 0.0)
        seqs = tokens if decode else 1
        read += seqs * kv_len * st.kv_bytes_per_token
        logits = tokens if decode else 1  # prefill samples only the last prompt token
        flops = 2 * tokens * n * self.active_layer + 4 * tokens * n * self.heads * m.head_dim * kv_len
        flops += 2 * logits * self.lm_head if last else 0.0
        comm = 0.0
        if self.layout.tp > 1:
            msg = tokens * m.hidden_size * self.act
            reduce = self.tp_link.all_reduce(msg, self.layout.tp)  # after attention, and after a dense MLP
            moe = (2 * self.tp_link.all_to_all(msg * m.num_experts_per_tok, self.layout.ep)  # dispatch + combine
                   if self.layout.ep > 1 else reduce)
            comm = n * (reduce + self.moe_share * moe + (1 - self.moe_share) * reduce)
        return flops / self.flops, read / self.bw, comm

    def send(self, i: int, tokens: float) -> float:
        """Seconds to hand stage i's hidden states and residual to stage i + 1."""
        link = self.fabric if self.cross[i] else self.node_link
        return link.send(2 * tokens * self.m.hidden_size * self.act)

    def step_times(self, tokens: float, kv_len: float, *, decode: bool) -> list[float]:
        """Seconds per stage (including the send to the next stage) for one step of `tokens` tokens."""
        out = []
        for i in range(self.layout.pp):
            comp, mem, comm = self.stage(i, tokens, kv_len, decode=decode)
            out.append(max(comp, mem) + comm + (self.send(i, tokens) if i < self.layout.pp - 1 else 0.0))
        return out


def estimate(m: ModelSpec, q: Quantization, layout: Split, cluster: ClusterShape, w: Workload,
             mem: ReplicaMemory) -> Estimate:
    """Estimate latency and throughput of one replica whose memory `mem` already fits."""
    r = _Replica(m, q, layout, cluster, mem)
    window = kv_tokens_per_sequence(m, w.context_tokens)
    prompt = w.prompt
    decode_kv = min(window, (prompt + w.context_tokens) / 2)  # a sequence halfway through its output

    # Prefill: chunks of one prompt follow each other through the stages.
    chunk = min(prompt, w.max_num_batched_tokens)
    chunks = math.ceil(prompt / chunk)
    pre = r.step_times(chunk, min(window, prompt / 2), decode=False)
    ttft = sum(pre) + (chunks - 1) * max(pre)
    bubble = (layout.pp - 1) / (chunks + layout.pp - 1)

    one = r.step_times(1, decode_kv, decode=True)
    tpot = sum(one)
    compute_or_memory = sum(max(*r.stage(i, 1, decode_kv, decode=True)[:2]) for i in range(layout.pp))
    comm_share = 1 - compute_or_memory / tpot

    batch = max(1, mem.max_sequences)
    micro = min(layout.pp, batch)
    mb = batch / micro
    loaded = r.step_times(mb, decode_kv, decode=True)
    # `micro` micro-batches circulate; the slowest stage caps how often one can enter.
    tokens_per_s = mb * min(micro / sum(loaded), 1 / max(loaded))
    slowest = max(range(layout.pp), key=lambda i: loaded[i])
    comp, memt, _ = r.stage(slowest, mb, decode_kv, decode=True)
    return Estimate(
        ttft_s=ttft,
        tpot_s=tpot,
        batch=batch,
        tokens_per_s=tokens_per_s,
        itl_at_load_s=batch / tokens_per_s,
        prefill_bubble=bubble,
        stage_imbalance=max(loaded) / (sum(loaded) / len(loaded)),
        comm_share=comm_share,
        decode_bound="compute" if comp > memt else "memory",
    )
