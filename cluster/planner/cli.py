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

_COLUMNS = ("#", "layout", "replicas", "gpus", "weights GB/gpu", "kv GB/gpu", "seqs", "ttft ms", "tpot ms",
            "tok/s replica", "tok/s cluster", "strategy", "notes")


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
                     f"{d['kv_gb_per_gpu']:.1f}", str(d["max_sequences_per_replica"]), f"{d['ttft_ms']:.0f}",
                     f"{d['tpot_ms']:.1f}", f"{d['replica_tokens_per_s']:.0f}", f"{d['cluster_tokens_per_s']:.0f}",
                     p.strategy, "; ".join(p.notes)))
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
    model: str = typer.Option(..., "--model", help="Catalog name (e.g. mixtral-8x7b), known hub id, tiny:<kind> "
                              "or local dir with config.json."),
    gpu: str = typer.Option(..., "--gpu", help="Accelerator (e.g. A100-80GB, H100-80GB, L4) or one defined in --config."),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Nodes in the cluster."),
    gpus_per_node: int = typer.Option(..., "--gpus-per-node", min=1, help="GPUs per node."),
    context: int = typer.Option(4096, "--context", min=1, help="Tokens per sequence (max_model_len)."),
    quant: str = typer.Option("bf16", "--quant", help="Weight format: bf16, fp16, fp32, fp8, int8, awq, gptq, nf4, "
                              "nf4-dq, gguf-q2_k .. gguf-q8_0."),
    rank: str = typer.Option("throughput", "--rank", help="throughput (cluster tokens/s) or latency (time per token)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
    top: int = typer.Option(10, "--top", min=1, help="Plans shown in the table."),
    fast_fabric: bool = typer.Option(False, "--fast-fabric", help="Nodes share InfiniBand/RoCE with GPUDirect "
                                     "(lets TP cross nodes)."),
    fabric_gb_s: float = typer.Option(12.5, "--fabric-gb-s", min=0.001, help="Inter-node bandwidth per node in GB/s."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization", min=0.01, max=1.0,
                                                 help="vLLM's memory fraction."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", help="auto (the activation dtype) or fp8."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1, help="vLLM's cap on sequences per replica."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="App config whose `accelerators:` add GPU models."),
) -> None:
    """Plan a model on a cluster: feasible (TP, PP, EP, replicas) layouts ranked, rejected ones with reasons."""
    try:
        extra = ()
        if config is not None:
            from serve_app.schema import load_config

            extra = load_config(config).accelerators
        if rank not in ("throughput", "latency"):
            raise PlannerError(f"--rank {rank!r} must be throughput or latency")
        if kv_cache_dtype not in ("auto", "fp8"):
            raise PlannerError(f"--kv-cache-dtype {kv_cache_dtype!r} must be auto or fp8")
        cluster = ClusterShape(nodes, gpus_per_node, find_accelerator(gpu, extra),
                               fast_fabric=fast_fabric, fabric_gb_s=fabric_gb_s)
        workload = Workload(context, gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                            kv_cache_bytes=1.0 if kv_cache_dtype == "fp8" else None)
        report = plan(model_spec(model), cluster, quant=quantization(quant), workload=workload, rank=rank)
    except FleetserveError as e:  # PlannerError, or ConfigError from --config: the message, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report, top=top))
    if not report.plans:
        raise typer.Exit(1)


cli.command("plan")(plan_command)
