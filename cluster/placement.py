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
    absent = sorted(r for r in need if not any(n.get(r, 0) > 0 for n in nodes))
    if absent:
        return (f"no node has any {', '.join(absent)}: run on a cluster with {absent[0]} nodes"
                + (", or set placement.accelerator: CPU to try it on this machine" if "GPU" in absent else ""))
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
    *, model: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float, can_grow: bool = True
) -> None:
    """Reserve one replica's placement group as a probe; raise PlacementError if not ready in time.

    `can_grow` False (a Ray started here: no autoscaler can add nodes) fails at once when the
    nodes can never hold the group, e.g. a GPU placement on a machine without GPUs.
    """
    if not can_grow:
        why = static_problem(bundles, strategy, node_resources())
        if why:
            raise _placement_error(model, bundles, strategy, why, "the local Ray cannot add nodes, so this was not retried")
    pg = placement_group(bundles, strategy=strategy, name=f"fleetserve-probe-{model}")
    try:
        ready = pg.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(pg)
    if ready:
        return
    why = static_problem(bundles, strategy, node_resources())
    raise _placement_error(model, bundles, strategy, why or "resources are taken by other work",
                           f"no placement was possible within {timeout_s:g} s")


def _placement_error(model: str, bundles: list[dict[str, float]], strategy: str, why: str, when: str) -> PlacementError:
    nodes = node_resources()
    node_lines = "; ".join(
        f"node {i}: " + _fmt({k: v for k, v in n.items() if k in ("CPU", "GPU") or any(k in b for b in bundles)})
        for i, n in enumerate(nodes)
    )
    return PlacementError(
        f"model {model!r} cannot be placed: one replica needs {len(bundles)} bundles {bundles} with strategy {strategy}"
        f" ({why}); {when}"
        + f". Cluster nodes: {node_lines or 'none'}. Fix: add a node large enough, lower parallelism.tensor/pipeline,"
        f" or use placement.strategy PACK to let pipeline stages cross nodes."
    )


def _fmt(res) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items()) if not k.startswith("node:")) + "}"
