"""`parallelism: auto`: turn a model deployment's config into the top plan's TP / PP / EP and strategy.

The app builder calls `resolve_parallelism` for each model whose parallelism is "auto", with
the cluster it deploys on (from the live Ray cluster or the config), and uses the returned
`Parallelism` exactly as if the config had spelled it out; `bundles_for` / `strategy_for`
then give the placement group. The config itself is not rewritten (facts discovered at build
time live beside the config).
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.planner.accelerators import find_accelerator
from cluster.planner.catalog import model_spec
from cluster.planner.errors import PlannerError
from cluster.planner.placement import strategy_for
from cluster.planner.plans import PlanReport, Rank, plan
from cluster.planner.quant import Quantization, quantization
from cluster.planner.shapes import ClusterShape, Split, Workload
from serve_app.schema import AcceleratorSpec
from serve_app.schema import ModelConfig, Parallelism

__all__ = ["resolve_parallelism", "plan_for_model", "quantization_for", "workload_for"]

# vLLM `quantization` engine-arg values -> planner format (None: ambiguous, needs models[].quantization).
_VLLM_QUANT = {"awq": "awq", "awq_marlin": "awq", "gptq": "gptq", "gptq_marlin": "gptq", "fp8": "fp8",
               "bitsandbytes": "nf4", "gguf": None}


def quantization_for(model_cfg: ModelConfig) -> Quantization:
    """Pick the weight format: `quantization`, else vLLM's engine_args.quantization, else engine_args.dtype.

    Raises PlannerError naming the field when the value is unknown or ambiguous.
    """
    if model_cfg.quantization:
        try:
            return quantization(model_cfg.quantization)
        except PlannerError as e:
            raise PlannerError(f"models[{model_cfg.name}].quantization: {e}") from e
    vllm_q = model_cfg.engine_args.get("quantization")
    if vllm_q:
        name = _VLLM_QUANT.get(str(vllm_q).lower())
        if name is None:
            raise PlannerError(
                f"models[{model_cfg.name}].engine_args.quantization={vllm_q!r} does not say the bits per weight; "
                f"set models[{model_cfg.name}].quantization (e.g. gguf-q4_k, nf4-dq) for parallelism: auto"
            )
        return quantization(name)
    dtype = str(model_cfg.engine_args.get("dtype", "auto"))
    try:
        return quantization(dtype)
    except PlannerError as e:
        raise PlannerError(f"models[{model_cfg.name}].engine_args.dtype: {e}") from e


def workload_for(model_cfg: ModelConfig, *, context_len: int) -> Workload:
    """Build the workload from engine_args (gpu_memory_utilization, max_num_seqs, max_num_batched_tokens, kv_cache_dtype)."""
    ea = model_cfg.engine_args
    kv = str(ea.get("kv_cache_dtype", "auto"))
    return Workload(
        context_tokens=context_len,
        gpu_memory_utilization=float(ea.get("gpu_memory_utilization", 0.9)),
        kv_cache_bytes=1.0 if kv.startswith("fp8") else None,
        max_num_seqs=int(ea.get("max_num_seqs", 256)),
        max_num_batched_tokens=int(ea.get("max_num_batched_tokens", 2048)),
    )


def plan_for_model(model_cfg: ModelConfig, *, nodes: int, gpus_per_node: int, accelerator: str | AcceleratorSpec,
                   context_len: int | None = None, extra_accelerators: Iterable[AcceleratorSpec] = (),
                   fast_fabric: bool = False, rank: Rank = "throughput") -> PlanReport:
    """Plan one model deployment on `nodes` x `gpus_per_node` x `accelerator`; see `resolve_parallelism`."""
    spec = model_spec(model_cfg.source)
    accel = accelerator if isinstance(accelerator, AcceleratorSpec) else find_accelerator(accelerator, extra_accelerators)
    ctx = context_len or model_cfg.max_model_len or spec.max_position_embeddings or 4096
    cluster = ClusterShape(nodes, gpus_per_node, accel, fast_fabric=fast_fabric)
    return plan(spec, cluster, quant=quantization_for(model_cfg), workload=workload_for(model_cfg, context_len=ctx), rank=rank)


def resolve_parallelism(model_cfg: ModelConfig, *, nodes: int, gpus_per_node: int, accelerator: str | AcceleratorSpec,
                        context_len: int | None = None, extra_accelerators: Iterable[AcceleratorSpec] = (),
                        fast_fabric: bool = False, rank: Rank = "throughput") -> tuple[Parallelism, str]:
    """Return (parallelism, placement strategy) for a model deployment, planning it when parallelism is "auto".

    Contract:
    - An explicit `model_cfg.parallelism` comes back unchanged (so callers may call this for every model).
    - On the CPU accelerator "auto" is TP = PP = 1 (vLLM's CPU platform runs the tiny models).
    - Otherwise the model (catalog name, known hub id, `tiny:` or local dir with config.json) is planned
      on `nodes` x `gpus_per_node` GPUs of `accelerator` (a catalog / Ray accelerator-type name, looked up
      in `extra_accelerators` first, e.g. AppConfig.accelerators, or a spec) at `context_len` tokens
      (default: max_model_len, else the model's max_position_embeddings), in the weight format of
      `quantization_for`, and the top plan for `rank` wins.
    - The strategy is `placement.strategy` when explicit, else STRICT_PACK if the replica fits one node,
      else PACK.
    Raises PlannerError when the model, accelerator or format is unknown or no layout fits (with the reasons).
    """
    placement = model_cfg.placement
    if model_cfg.parallelism != "auto":
        par = model_cfg.parallelism
    elif placement.on_cpu:
        par = Parallelism()
    else:
        report = plan_for_model(model_cfg, nodes=nodes, gpus_per_node=gpus_per_node, accelerator=accelerator,
                                context_len=context_len, extra_accelerators=extra_accelerators,
                                fast_fabric=fast_fabric, rank=rank)
        layout: Split = report.best.layout
        par = Parallelism(tensor=layout.tp, pipeline=layout.pp, expert=layout.ep)
    return par, strategy_for(par, placement, accelerators_per_node=gpus_per_node)
