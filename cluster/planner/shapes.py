"""The planner's inputs besides model and format: a replica's layout, the cluster and the workload."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.planner.errors import PlannerError
from serve_app.schema import AcceleratorSpec

__all__ = ["Split", "ClusterShape", "Workload"]


@dataclass(frozen=True, order=True)
class Split:
    """How one replica is split (a planner candidate; the resolved deployment layout is cluster.planner.layout.Layout): tensor x pipeline ranks, expert parallelism over the TP group (ep = 1 or tp)."""

    tp: int = 1
    pp: int = 1
    ep: int = 1

    @property
    def world(self) -> int:
        """GPUs one replica takes."""
        return self.tp * self.pp

    def __str__(self) -> str:
        return f"TP{self.tp}xPP{self.pp}" + (f"+EP{self.ep}" if self.ep > 1 else "")


@dataclass(frozen=True)
class Workload:
    """What the replica must serve; defaults are vLLM's online-serving defaults."""

    context_tokens: int
    """Tokens per sequence (prompt + output), i.e. max_model_len."""
    gpu_memory_utilization: float = 0.9
    kv_cache_bytes: float | None = None
    """Bytes per KV element; None = the format's activation bytes (vLLM kv_cache_dtype=auto). fp8 KV: 1."""
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    """Chunked-prefill budget per step; also sizes the activation peak vLLM profiles."""
    runtime_reserve_gib: float = 1.0
    """Per GPU, beside weights and activations: CUDA context, CUDA graphs, NCCL buffers (an estimate)."""
    prompt_tokens: int | None = None
    """Prompt length for time-to-first-token; half the context when None."""

    def __post_init__(self) -> None:
        checks = [
            ("context_tokens", self.context_tokens, self.context_tokens >= 1, ">= 1"),
            ("gpu_memory_utilization", self.gpu_memory_utilization, 0 < self.gpu_memory_utilization <= 1, "in (0, 1]"),
            ("max_num_seqs", self.max_num_seqs, self.max_num_seqs >= 1, ">= 1"),
            ("max_num_batched_tokens", self.max_num_batched_tokens, self.max_num_batched_tokens >= 1, ">= 1"),
            ("runtime_reserve_gib", self.runtime_reserve_gib, self.runtime_reserve_gib >= 0, ">= 0"),
            ("prompt_tokens", self.prompt_tokens,
             self.prompt_tokens is None or 1 <= self.prompt_tokens <= self.context_tokens, "in 1..context_tokens"),
        ]
        for field, value, ok, rule in checks:
            if not ok:
                raise PlannerError(f"workload.{field}={value} must be {rule}")

    @property
    def prompt(self) -> int:
        """Prompt tokens used for time-to-first-token."""
        return self.prompt_tokens or max(1, self.context_tokens // 2)


@dataclass(frozen=True)
class ClusterShape:
    """Identical nodes of identical GPUs, and what connects the nodes."""

    nodes: int
    gpus_per_node: int
    accelerator: AcceleratorSpec
    fast_fabric: bool = False
    """InfiniBand / RoCE with GPUDirect RDMA between nodes: the only fabric tensor parallelism may cross."""
    fabric_gb_s: float = 12.5
    """Inter-node bandwidth per node and direction in GB/s (12.5 = 100 Gb/s Ethernet; 50 = 400 Gb/s InfiniBand)."""

    def __post_init__(self) -> None:
        for field in ("nodes", "gpus_per_node"):
            if getattr(self, field) < 1:
                raise PlannerError(f"cluster.{field}={getattr(self, field)} must be >= 1")
        if self.fabric_gb_s <= 0:
            raise PlannerError(f"cluster.fabric_gb_s={self.fabric_gb_s} must be > 0")

    @property
    def total_gpus(self) -> int:
        """GPUs in the cluster."""
        return self.nodes * self.gpus_per_node

    def __str__(self) -> str:
        return f"{self.nodes} node(s) x {self.gpus_per_node} x {self.accelerator.name}"
