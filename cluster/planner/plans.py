"""Plans: enumerate (TP, PP, EP, replicas) layouts for a cluster, reject the invalid with reasons, rank the rest.

`plan(...)` returns a `PlanReport`: the feasible plans ranked for throughput (cluster tokens/s
at full load) or latency (time per output token of a lone sequence), and every rejected layout
with the rules it breaks. The rules mirror vLLM's: attention heads split evenly over TP ranks,
KV heads split or replicated evenly, each PP stage holds a layer, experts split evenly over EP
ranks (EP = TP), quantization groups not cut by a TP shard, and tensor parallelism stays within
a node unless the nodes share a fast fabric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from cluster.planner.errors import PlannerError
from cluster.planner.memory import ReplicaMemory, replica_memory, weight_bytes
from cluster.planner.models import ModelSpec
from cluster.planner.placement import auto_strategy
from cluster.planner.quant import Quantization
from cluster.planner.roofline import Estimate, estimate
from cluster.planner.shapes import ClusterShape, Split, Workload

__all__ = ["Plan", "Rejected", "PlanReport", "Rank", "candidate_layouts", "check_layout", "plan"]

Rank = Literal["throughput", "latency"]
GB = 1e9


@dataclass(frozen=True)
class Plan:
    """A feasible layout with its replica count, placement and estimates."""

    layout: Split
    replicas: int
    strategy: str
    memory: ReplicaMemory
    estimate: Estimate
    notes: tuple[str, ...] = ()

    @property
    def cluster_tokens_per_s(self) -> float:
        """Decode throughput of all replicas at full load."""
        return self.replicas * self.estimate.tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view, figures rounded for reading."""
        e, mem = self.estimate, self.memory
        return {
            "tp": self.layout.tp, "pp": self.layout.pp, "ep": self.layout.ep, "gpus_per_replica": self.layout.world,
            "replicas": self.replicas, "strategy": self.strategy,
            "weights_gb_per_gpu": round(mem.weights_per_gpu / GB, 2), "kv_gb_per_gpu": round(mem.kv_bytes_per_gpu / GB, 2),
            "kv_tokens_per_replica": mem.kv_tokens, "max_sequences_per_replica": mem.max_sequences,
            "ttft_ms": round(e.ttft_s * 1e3, 1), "tpot_ms": round(e.tpot_s * 1e3, 2),
            "replica_tokens_per_s": round(e.tokens_per_s, 1), "cluster_tokens_per_s": round(self.cluster_tokens_per_s, 1),
            "itl_at_load_ms": round(e.itl_at_load_s * 1e3, 2), "prefill_bubble": round(e.prefill_bubble, 3),
            "stage_imbalance": round(e.stage_imbalance, 3), "comm_share": round(e.comm_share, 3),
            "decode_bound": e.decode_bound, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Rejected:
    """A layout that cannot serve, with every rule it breaks."""

    layout: Split
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        """The reasons as one sentence."""
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class PlanReport:
    """Ranked feasible plans and rejected layouts for one model, format, cluster and workload."""

    model: ModelSpec
    quant: Quantization
    cluster: ClusterShape
    workload: Workload
    rank: Rank
    plans: tuple[Plan, ...]
    rejected: tuple[Rejected, ...]

    @property
    def best(self) -> Plan:
        """The top-ranked plan. Raises PlannerError, with the most common reasons, when nothing fits."""
        if not self.plans:
            # The layouts using the whole cluster say best why nothing fits (usually memory).
            widest = max((r.layout.world for r in self.rejected), default=0)
            reasons = sorted({r.reasons[-1] for r in self.rejected if r.layout.world == widest})
            raise PlannerError(
                f"no layout of {self.model.name} ({self.quant.name}) fits {self.cluster} at context "
                f"{self.workload.context_tokens}: " + "; ".join(reasons[:3])
                + "; use more or larger GPUs, a smaller quantization or a shorter context"
            )
        return self.plans[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the whole report."""
        return {
            "model": self.model.name, "quantization": self.quant.name,
            "weights_gb": round(weight_bytes(self.model, self.quant) / GB, 2),
            "cluster": {"nodes": self.cluster.nodes, "gpus_per_node": self.cluster.gpus_per_node,
                        "accelerator": self.cluster.accelerator.name, "fast_fabric": self.cluster.fast_fabric},
            "context_tokens": self.workload.context_tokens, "rank": self.rank,
            "plans": [p.to_dict() for p in self.plans],
            "rejected": [{"tp": r.layout.tp, "pp": r.layout.pp, "ep": r.layout.ep, "reasons": list(r.reasons)}
                         for r in self.rejected],
        }


def candidate_layouts(m: ModelSpec, cluster: ClusterShape) -> list[Split]:
    """List the layouts worth checking: TP in powers of two, divisors and multiples of the node size; any PP;
    EP = TP for MoE models."""
    total, gpn = cluster.total_gpus, cluster.gpus_per_node
    tps = {2**i for i in range(total.bit_length()) if 2**i <= total}
    tps |= {d for d in range(1, gpn + 1) if gpn % d == 0} | {gpn * k for k in range(1, cluster.nodes + 1)}
    out = []
    for tp in sorted(tps):
        for pp in range(1, total // tp + 1):
            out.append(Split(tp, pp, 1))
            if m.is_moe and tp > 1:
                out.append(Split(tp, pp, tp))
    return out


def check_layout(m: ModelSpec, q: Quantization, layout: Split, cluster: ClusterShape) -> tuple[str, ...]:
    """Return the structural rules `layout` breaks (empty when none); memory is checked by `plan`."""
    tp, pp, ep, gpn = layout.tp, layout.pp, layout.ep, cluster.gpus_per_node
    heads, kv, layers = m.num_attention_heads, m.num_key_value_heads, m.num_hidden_layers
    out = []
    if layout.world > cluster.total_gpus:
        out.append(f"needs {layout.world} GPUs, the cluster has {cluster.total_gpus}")
    if heads % tp:
        out.append(f"num_attention_heads={heads} is not divisible by tp={tp}")
    if kv % tp and tp % kv:
        out.append(f"tp={tp} neither divides num_key_value_heads={kv} nor is a multiple of it: "
                   "KV heads can be neither split nor replicated evenly")
    if pp > layers:
        out.append(f"pp={pp} exceeds num_hidden_layers={layers}: a stage would hold no layer")
    if ep > 1 and not m.is_moe:
        out.append(f"ep={ep} but the model is dense (no experts)")
    elif ep not in (1, tp):
        out.append(f"ep={ep} must be 1 or tp={tp}: vLLM spreads experts over the tensor-parallel group")
    elif ep > 1 and m.num_experts % ep:
        out.append(f"num_experts={m.num_experts} is not divisible by ep={ep}")
    widths = [("head dims (num_attention_heads x head_dim)", heads * m.head_dim)]
    if not m.is_moe or m.num_dense_layers:
        widths.append(("intermediate_size", m.intermediate_size))
    if m.is_moe and ep == 1:  # without EP every expert is sharded over the TP ranks
        widths.append(("moe_intermediate_size", m.moe_intermediate_size))
    for what, width in widths:
        if width % tp:
            out.append(f"{what}={width} is not divisible by tp={tp}")
        elif q.group_size and (width // tp) % q.group_size:
            out.append(f"{q.name} groups of {q.group_size} inputs do not align with the {width // tp} {what} per TP rank")
    if tp > gpn and not cluster.fast_fabric:
        out.append(f"tp={tp} spans {math.ceil(tp / gpn)} nodes of {gpn} GPUs without a fast fabric "
                   f"(TP all-reduces twice per layer); keep tp <= {gpn} and use pp across nodes, or set fast_fabric")
    if gpn >= tp and layout.world > gpn and gpn % tp:
        out.append(f"a replica of {layout.world} GPUs spans nodes but tp={tp} does not divide gpus_per_node={gpn}, "
                   "so a TP group would straddle two nodes")
    return tuple(out)


def _memory_reason(mem: ReplicaMemory, accel_gib: float, w: Workload) -> str | None:
    worst = min(mem.stages, key=lambda s: s.kv_budget)
    if worst.kv_budget <= 0:
        return (f"weights need {worst.weights / GB:.1f} GB per GPU plus {(worst.activations + worst.reserve) / GB:.1f} GB "
                f"activations and runtime, over the {worst.budget / GB:.1f} GB budget "
                f"({w.gpu_memory_utilization} x {accel_gib:g} GiB)")
    if mem.max_sequences < 1:
        tight = min(mem.stages, key=lambda s: s.kv_tokens)
        need = mem.tokens_per_sequence * tight.kv_bytes_per_token
        return (f"no room for one {w.context_tokens}-token sequence: it needs {need / GB:.2f} GB of KV cache per GPU, "
                f"{tight.kv_budget / GB:.2f} GB are left after weights")
    return None


def _replicas(layout: Split, cluster: ClusterShape) -> int:
    if layout.world <= cluster.gpus_per_node:
        return cluster.nodes * (cluster.gpus_per_node // layout.world)
    return cluster.total_gpus // layout.world


def _notes(m: ModelSpec, layout: Split, cluster: ClusterShape, replicas: int) -> tuple[str, ...]:
    notes = []
    if layout.tp > m.num_key_value_heads:
        notes.append(f"KV heads replicated {layout.tp // m.num_key_value_heads}x (tp > num_key_value_heads)")
    if m.num_hidden_layers % layout.pp:
        notes.append(f"uneven stages: {m.num_hidden_layers} layers over pp={layout.pp}")
    if layout.world > cluster.gpus_per_node:
        notes.append(f"spans {math.ceil(layout.world / cluster.gpus_per_node)} nodes")
    idle = cluster.total_gpus - replicas * layout.world
    if idle:
        notes.append(f"{idle} GPU(s) idle")
    return tuple(notes)


def _rank_key(p: Plan, rank: Rank) -> tuple:
    e = p.estimate
    if rank == "latency":
        return (round(e.tpot_s, 9), round(e.ttft_s, 9), -p.cluster_tokens_per_s, p.layout)
    return (-round(p.cluster_tokens_per_s, 6), p.layout.world, round(e.tpot_s, 9), p.layout)


def plan(m: ModelSpec, cluster: ClusterShape, *, quant: Quantization, workload: Workload,
         rank: Rank = "throughput", layouts: list[Split] | None = None) -> PlanReport:
    """Check every candidate layout (or `layouts`), estimate the feasible ones and rank them.

    rank="throughput" orders by cluster decode tokens/s at full load (fewer GPUs per replica on
    ties); rank="latency" by time per output token of a lone sequence, then time to first token.
    """
    if rank not in ("throughput", "latency"):
        raise PlannerError(f"rank={rank!r} must be 'throughput' or 'latency'")
    plans, rejected = [], []
    for layout in layouts if layouts is not None else candidate_layouts(m, cluster):
        reasons = check_layout(m, quant, layout, cluster)
        if reasons:
            rejected.append(Rejected(layout, reasons))
            continue
        mem = replica_memory(m, quant, layout, cluster.accelerator, workload)
        why = _memory_reason(mem, cluster.accelerator.memory_gib, workload)
        if why:
            rejected.append(Rejected(layout, (why,)))
            continue
        replicas = _replicas(layout, cluster)
        plans.append(Plan(
            layout=layout, replicas=replicas, strategy=auto_strategy(layout.world, cluster.gpus_per_node), memory=mem,
            estimate=estimate(m, quant, layout, cluster, workload, mem), notes=_notes(m, layout, cluster, replicas),
        ))
    plans.sort(key=lambda p: _rank_key(p, rank))
    return PlanReport(m, quant, cluster, workload, rank, tuple(plans), tuple(rejected))
