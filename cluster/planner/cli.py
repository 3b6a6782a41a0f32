"""`fleetserve plan`: which layouts of a model fit a cluster, and which is faster. A thin shell over `plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cluster.planner.accelerators import find_accelerator
from cluster.planner.catalog import model_spec
from cluster.planner.errors import PlannerError
from cluster.planner.memory import weight_bytes
from cluster.planner.models import param_counts
from cluster.planner.plans import GB, PlanReport, plan
from cluster.planner.quant import quantization
from cluster.planner.shapes import ClusterShape, Workload
from serve_app.errors import FleetserveError

__all__ = ["cli", "plan_command", "format_report"]

cli = typer.Typer(add_completion=False, help="Capacity planning: layouts that fit a cluster, ranked.")

# Latency of a lone sequence, then figures at full load (every replica decoding its whole batch).
_COLUMNS = ("#", "layout", "replicas", "gpus", "weights GB/gpu", "kv GB/gpu", "ttft ms 1-seq", "tpot ms 1-seq",
            "batch", "itl ms @batch", "tok/s replica @batch", "tok/s cluster @batch", "strategy", "notes")


def format_report(report: PlanReport, *, top: int = 10) -> str:
    """Render a report as a text table of the top plans followed by every rejected layout and its reasons."""
    m, q = report.model, report.quant
    c = param_counts(m)
    head = (f"{m.name}: {c.total / 1e9:.1f}B parameters ({c.active / 1e9:.1f}B active), "
            f"{weight_bytes(m, q) / GB:.1f} GB in {q.name}; {report.cluster}; context {report.workload.context_tokens}; "
            f"ranked for {report.rank}")
    if m.estimated:
        head += f"\n(estimated model fields: {', '.join(m.estimated)})"
    rows = []
    for i, p in enumerate(report.plans[:top], 1):
        d = p.to_dict()
        rows.append((str(i), str(p.layout), str(p.replicas), str(p.layout.world), f"{d['weights_gb_per_gpu']:.1f}",
                     f"{d['kv_gb_per_gpu']:.1f}", f"{d['ttft_ms']:.0f}", f"{d['tpot_ms']:.1f}",
                     str(p.estimate.batch), f"{d['itl_at_load_ms']:.1f}", f"{d['replica_tokens_per_s']:.0f}",
                     f"{d['cluster_tokens_per_s']:.0f}", p.strategy, "; ".join(p.notes)))
    w = report.workload
    prompt_from = "--prompt-len" if w.prompt_tokens else "half the context; set --prompt-len"
    head += (f"\nassumed: 1-seq columns are a lone request (TTFT of a {w.prompt} token prompt ({prompt_from}), TPOT at "
             f"batch 1); @batch columns are every replica decoding its full batch (KV room, capped by max_num_seqs "
             f"{w.max_num_seqs}), sequences halfway through their output")
    lines = [head, ""]
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_COLUMNS)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(_COLUMNS, widths)).rstrip())
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        if len(report.plans) > top:
            lines.append(f"... {len(report.plans) - top} more feasible layout(s) (--top)")
    else:
        lines.append("no layout fits")
    if report.rejected:
        lines += ["", "rejected:"] + [f"  {r.layout}: {r.reason}" for r in report.rejected]
    return "\n".join(lines)


def plan_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Catalog name (e.g. mixtral-8x7b), known hub id, "
                                        "tiny:<kind> or local dir with config.json; default: each model of --config."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Accelerator (e.g. A100-80GB, H100-80GB, L4) or one defined "
                                      "in --config; default: the model's placement.accelerator_type."),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Nodes in the cluster."),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", min=1,
                                                help="GPUs per node; default: the model's placement.accelerators_per_node."),
    context: Optional[int] = typer.Option(None, "--context", "--max-model-len", min=1,
                                          help="Tokens per sequence (max_model_len); default: the model's max_model_len, "
                                          "else 4096. Refused above the model's max_position_embeddings."),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", min=1,
                                             help="Prompt tokens for TTFT; default half the context."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Weight format: bf16, fp16, fp32, fp8, int8, awq, gptq, "
                                        "nf4, nf4-dq, gguf-q2_k .. gguf-q8_0; default bf16, or the model's dtype/quantization."),
    rank: str = typer.Option("throughput", "--rank", help="throughput (cluster tokens/s) or latency (time per token)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
    top: int = typer.Option(10, "--top", min=1, help="Plans shown in the table."),
    fast_fabric: bool = typer.Option(False, "--fast-fabric", help="Nodes share InfiniBand/RoCE with GPUDirect "
                                     "(lets TP cross nodes)."),
    fabric_gb_s: float = typer.Option(12.5, "--fabric-gb-s", min=0.001, help="Inter-node bandwidth per node in GB/s."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization", min=0.01, max=1.0,
                                                           help="vLLM's memory fraction (default 0.9)."),
    kv_cache_dtype: Optional[str] = typer.Option(None, "--kv-cache-dtype", help="auto (the activation dtype) or fp8."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", min=1,
                                               help="vLLM's cap on sequences per replica (default 256)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A deploy file: plans each of its models (or "
                                          "--model), and its `accelerators:` add GPU models."),
    emit_config: bool = typer.Option(False, "--emit-config", help="Print the best plan as the parallelism/placement "
                                     "YAML block of a model, to paste into a deploy file."),
) -> None:
    """Plan a model on a cluster: feasible (TP, PP, EP, replicas) layouts ranked, rejected ones with reasons.

    Example: fleetserve plan -m mixtral-8x7b --gpu A100-80GB --gpus-per-node 4 --context 8192;
    fleetserve plan -c cluster/k8s/scenarios/mistral-7b-l4.yaml --emit-config
    """
    try:
        app = None
        if config is not None:
            from serve_app.schema import load_config

            app = load_config(config)
        if rank not in ("throughput", "latency"):
            raise PlannerError(f"--rank {rank!r} must be throughput or latency")
        if kv_cache_dtype not in (None, "auto", "fp8"):
            raise PlannerError(f"--kv-cache-dtype {kv_cache_dtype!r} must be auto or fp8")
        targets = _targets(app, model)
        reports = []
        for name, cfg_model in targets:
            reports.append((name, *_plan_one(
                name, cfg_model, app=app, gpu=gpu, nodes=nodes, gpus_per_node=gpus_per_node, context=context,
                prompt_len=prompt_len, quant=quant, rank=rank, fast_fabric=fast_fabric, fabric_gb_s=fabric_gb_s,
                gpu_memory_utilization=gpu_memory_utilization, kv_cache_dtype=kv_cache_dtype, max_num_seqs=max_num_seqs)))
    except FleetserveError as e:  # PlannerError, or ConfigError from --config: the message, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        data = [r.to_dict() for _, r, _ in reports]
        typer.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for i, (name, report, accel) in enumerate(reports):
            if i:
                typer.echo("")
            if emit_config:
                typer.echo(emit_yaml(name, report, accelerator_type=accel) if report.plans else f"# {name}: no layout fits")
            else:
                typer.echo(format_report(report, top=top))
    if any(not r.plans for _, r, _ in reports):
        raise typer.Exit(1)


def _targets(app, model: str | None) -> list[tuple[str, object]]:
    """(name, model config or None) to plan: --model alone, a model of --config, or every model of it."""
    if app is None:
        if not model:
            raise PlannerError("give --model (a catalog name or hub id) or -c deploy.yaml to plan its models")
        return [(model, None)]
    if model:
        match = [m for m in app.models if m.name == model or m.source == model]
        return [(model, match[0])] if match else [(model, None)]
    return [(m.name, m) for m in app.models]


def _plan_one(name: str, m, *, app, gpu, nodes, gpus_per_node, context, prompt_len, quant, rank, fast_fabric,
              fabric_gb_s, gpu_memory_utilization, kv_cache_dtype, max_num_seqs) -> tuple[PlanReport, str]:
    """Plan one model; options given win over the model's config, which wins over the defaults.

    Returns the report and the accelerator name as given (a Ray accelerator type in a deploy file).
    """
    from cluster.planner.auto import quantization_for, workload_for

    extra = app.accelerators if app is not None else ()
    where = f"models[{name}]"
    spec = model_spec(m.source if m is not None else name)
    accel = gpu or (m.placement.accelerator_type if m is not None else None)
    per_node = gpus_per_node or (m.placement.accelerators_per_node if m is not None else None)
    if not accel or not per_node:
        missing = [f for f, v in (("--gpu (or placement.accelerator_type)", accel),
                                  ("--gpus-per-node (or placement.accelerators_per_node)", per_node)) if not v]
        raise PlannerError(f"{where}: planning needs {' and '.join(missing)}")
    ctx = context or (m.max_model_len if m is not None else None) or 4096
    limit = spec.max_position_embeddings
    if limit and ctx > limit:
        raise PlannerError(f"--context {ctx} exceeds {spec.name}'s max_position_embeddings {limit}: vLLM (and "
                           f"fleetserve serve) refuse a max_model_len above it; use --context {limit} or less")
    base = workload_for(m, context_len=ctx) if m is not None else Workload(ctx)
    workload = Workload(
        ctx, gpu_memory_utilization=gpu_memory_utilization or base.gpu_memory_utilization,
        max_num_seqs=max_num_seqs or base.max_num_seqs, max_num_batched_tokens=base.max_num_batched_tokens,
        kv_cache_bytes=(1.0 if kv_cache_dtype == "fp8" else None) if kv_cache_dtype else base.kv_cache_bytes,
        prompt_tokens=prompt_len)
    q = quantization(quant) if quant else (quantization_for(m) if m is not None else quantization("bf16"))
    cluster = ClusterShape(nodes, per_node, find_accelerator(accel, extra), fast_fabric=fast_fabric, fabric_gb_s=fabric_gb_s)
    return plan(spec, cluster, quant=q, workload=workload, rank=rank), accel


def emit_yaml(name: str, report: PlanReport, *, accelerator_type: str) -> str:
    """The best plan as a model's `parallelism`/`placement` block (and its max_model_len), ready to paste."""
    import yaml

    best = report.best
    block = {
        "max_model_len": report.workload.context_tokens,
        "parallelism": {"tensor": best.layout.tp, "pipeline": best.layout.pp, "expert": best.layout.ep},
        "placement": {"accelerator": "GPU", "accelerator_type": accelerator_type,
                      "accelerators_per_node": report.cluster.gpus_per_node, "strategy": best.strategy},
    }
    d = best.to_dict()
    return (f"# {name}: best of {len(report.plans)} plan(s) for {report.rank} on {report.cluster}: {best.layout}, "
            f"{d['weights_gb_per_gpu']:.1f} GB weights + {d['kv_gb_per_gpu']:.1f} GB KV per GPU\n"
            f"# paste under the model in models[]\n" + yaml.safe_dump(block, sort_keys=False))


cli.command("plan")(plan_command)
