"""Capacity planner: which layouts of a model fit a cluster, which is faster, and the placement they need.

Pure arithmetic over model and accelerator descriptions (imports neither ray, vllm nor locust).
The app builder, the KubeRay renderer, the sweep and local-Ray sizing take one resolved `Layout`
from `plan_layout` (parallelism, bundles, strategy, executor); `fleetserve plan` prints its reports.
"""

from __future__ import annotations

from cluster.planner.accelerators import ACCELERATOR_CATALOG, AcceleratorSpec, find_accelerator
from cluster.planner.auto import plan_for_model, quantization_for, resolve_parallelism, workload_for
from cluster.planner.catalog import MODEL_CATALOG, model_spec
from cluster.planner.errors import PlannerError
from cluster.planner.memory import (
    ReplicaMemory,
    StageMemory,
    kv_bytes_per_token,
    kv_heads_per_gpu,
    kv_tokens_per_sequence,
    replica_memory,
    stage_layers,
    weight_bytes,
)
from cluster.planner.models import ModelSpec, ParamCounts, param_counts
from cluster.planner.placement import auto_strategy, bundles_for, strategy_for
from cluster.planner.plans import Plan, PlanReport, Rejected, candidate_layouts, check_layout, plan
from cluster.planner.quant import QUANTIZATIONS, Quantization, quantization
from cluster.planner.roofline import Estimate, estimate
from cluster.planner.layout import Layout, LayoutError, plan_layout, plan_layouts
from cluster.planner.shapes import ClusterShape, Split, Workload

__all__ = [
    # descriptions
    "ModelSpec", "ParamCounts", "param_counts", "MODEL_CATALOG", "model_spec",
    "AcceleratorSpec", "ACCELERATOR_CATALOG", "find_accelerator", "Quantization", "QUANTIZATIONS", "quantization",
    # memory math
    "Split", "ClusterShape", "Workload", "StageMemory", "ReplicaMemory", "weight_bytes", "kv_heads_per_gpu",
    "kv_bytes_per_token", "kv_tokens_per_sequence", "stage_layers", "replica_memory",
    # plans
    "Estimate", "estimate", "Plan", "PlanReport", "Rejected", "candidate_layouts", "check_layout", "plan",
    # the Serve app's entry points
    "Layout", "LayoutError", "plan_layout", "plan_layouts",
    "bundles_for", "strategy_for", "auto_strategy", "resolve_parallelism", "plan_for_model", "quantization_for",
    "workload_for", "PlannerError",
]
