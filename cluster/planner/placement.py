"""Placement-group bundles and strategy for one replica: what the app builder hands to Serve.

One bundle per engine worker (TP x PP of them), so vLLM's Ray executor finds one accelerator
per worker in the replica's placement group. Pure: returns plain dicts and strings.
"""

from __future__ import annotations

from serve_app.schema import Parallelism, Placement

__all__ = ["bundles_for", "strategy_for", "auto_strategy"]


def auto_strategy(world_size: int, accelerators_per_node: int | None) -> str:
    """Pick the strategy for `strategy: auto`: STRICT_PACK when the replica fits one node, else PACK.

    With the per-node count unknown, a single worker still gets STRICT_PACK and anything larger
    PACK, which packs onto one node when it can and spills pipeline stages over nodes when not.
    """
    if accelerators_per_node is None:
        return "STRICT_PACK" if world_size == 1 else "PACK"
    return "STRICT_PACK" if world_size <= accelerators_per_node else "PACK"


def strategy_for(parallelism: Parallelism, placement: Placement, *, accelerators_per_node: int | None = None) -> str:
    """Return the placement-group strategy of a replica; an explicit `placement.strategy` wins.

    `accelerators_per_node` (e.g. read from the live Ray cluster) overrides
    `placement.accelerators_per_node` for `strategy: auto`.
    """
    if placement.strategy != "auto":
        return placement.strategy
    return auto_strategy(parallelism.world_size, accelerators_per_node or placement.accelerators_per_node)


def bundles_for(parallelism: Parallelism, placement: Placement) -> list[dict[str, float]]:
    """Return one bundle per engine worker: `{accelerator: 1, "CPU": cpus_per_worker}` x tensor x pipeline.

    With `placement.accelerator_type` set, each bundle also asks for Ray's
    `accelerator_type:<type>` marker resource (0.001), pinning workers to that GPU model; the
    type must then be Ray's name for it (e.g. "A100-80G", "H100", "L4"). On the CPU accelerator
    each bundle is `{"CPU": max(1, cpus_per_worker)}`. Bundle order is rank order (stage-major).
    """
    if placement.on_cpu:
        bundle = {"CPU": max(1.0, placement.cpus_per_worker)}
    else:
        bundle = {placement.accelerator: 1.0, "CPU": placement.cpus_per_worker}
        if placement.accelerator_type:
            bundle[f"accelerator_type:{placement.accelerator_type}"] = 0.001
    return [dict(bundle) for _ in range(parallelism.world_size)]
