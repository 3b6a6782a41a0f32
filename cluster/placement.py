"""Check that a replica's placement group can be scheduled, with a deadline.

Ray keeps a placement group no node can hold PENDING forever, and `serve.run` then blocks
with no word of why. Before deploying we reserve one replica's group as a probe: if it is not
ready within the deadline (time for an autoscaler to add nodes), we fail with the model, the
bundles, the strategy and the cluster's nodes named. The probe is removed either way.
"""

from __future__ import annotations

from collections import Counter

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from serve_app.errors import PlacementError

__all__ = ["check_schedulable", "node_resources", "static_problem"]


def node_resources() -> list[dict[str, float]]:
    """Return the total resources of each alive node (logical GPUs included)."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def static_problem(bundles: list[dict[str, float]], strategy: str, nodes: list[dict[str, float]]) -> str | None:
    """Say why `bundles` can never fit `nodes` as they are now, or None when they might."""
    if not nodes:
        return "the cluster has no alive nodes"
    need = Counter()
    for b in bundles:
        need.update(b)
    if strategy == "STRICT_PACK":
        if not any(all(n.get(r, 0) >= q for r, q in need.items()) for n in nodes):
            return f"STRICT_PACK needs {_fmt(need)} on ONE node; no node has that much"
    for i, b in enumerate(bundles):
        if not any(all(n.get(r, 0) >= q for r, q in b.items()) for n in nodes):
            return f"bundle {i} {_fmt(b)} fits no node"
    total = Counter()
    for n in nodes:
        total.update(n)
    if any(total.get(r, 0) < q for r, q in need.items()):
        return f"the whole cluster has {_fmt({r: total.get(r, 0) for r in need})}, less than the {_fmt(need)} needed"
    if strategy == "STRICT_SPREAD" and len(nodes) < len(bundles):
        return f"STRICT_SPREAD needs {len(bundles)} nodes; the cluster has {len(nodes)}"
    return None


def check_schedulable(
    *, model: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float
) -> None:
    """Reserve one replica's placement group as a probe; raise PlacementError if not ready in time."""
    pg = placement_group(bundles, strategy=strategy, name=f"fleetserve-probe-{model}")
    try:
        ready = pg.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(pg)
    if ready:
        return
    nodes = node_resources()
    why = static_problem(bundles, strategy, nodes)
    node_lines = "; ".join(
        f"node {i}: " + _fmt({k: v for k, v in n.items() if k in ("CPU", "GPU") or any(k in b for b in bundles)})
        for i, n in enumerate(nodes)
    )
    raise PlacementError(
        f"model {model!r} cannot be placed: one replica needs {len(bundles)} bundles {bundles} with strategy {strategy}"
        f" and no placement was possible within {timeout_s:g} s"
        + (f" ({why})" if why else " (resources are taken by other work)")
        + f". Cluster nodes: {node_lines or 'none'}. Fix: add a node large enough, lower parallelism.tensor/pipeline,"
        f" or use placement.strategy PACK to let pipeline stages cross nodes."
    )


def _fmt(res) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items()) if not k.startswith("node:")) + "}"
