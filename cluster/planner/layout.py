"""A model's resolved layout, made once: `plan_layout(model, ...)` -> `Layout`.

    ModelConfig (parallelism may be "auto", strategy/executor may be "auto")
      + accelerators per node (the live Ray cluster's, or placement.accelerators_per_node)
      └─► plan_layout ──► Layout(parallelism, bundles, strategy, executor)
            ├─► serve_app.app: placement group + vLLM's TP/PP/executor
            ├─► cluster.k8s: pods sized for it, pinned in the RayService's Serve config
            ├─► loadtest.sweep: recorded beside each strategy's results
            └─► cluster.ray_cluster: local Ray sized for it

Pure. Nothing downstream of a Layout sees "auto"; the config is never rewritten (a discovered
layout lives beside the config, as this value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cluster.planner.auto import resolve_parallelism
from cluster.planner.errors import PlannerError
from cluster.planner.placement import bundles_for, strategy_for
from serve_app.errors import ConfigError
from serve_app.schema import AcceleratorSpec, ModelConfig, Parallelism

__all__ = ["Layout", "LayoutError", "plan_layout", "plan_layouts"]


class LayoutError(ConfigError):
    """A config whose layout cannot be resolved; `field` is the path at fault (e.g. models[0].parallelism)."""

    def __init__(self, field: str, message: str):
        super().__init__([(field, message)])
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Layout:
    """Where and how one replica of a model runs; every "auto" resolved."""

    parallelism: Parallelism
    bundles: tuple[dict[str, float], ...]  # one per engine worker, rank order
    strategy: str  # placement-group strategy: STRICT_PACK, PACK, SPREAD, STRICT_SPREAD
    executor: str  # vLLM distributed executor: "mp" or "ray"
    on_cpu: bool

    @property
    def workers(self) -> int:
        """Engine workers of one replica (tensor x pipeline)."""
        return self.parallelism.world_size

    @property
    def gpus_per_replica(self) -> int:
        """Accelerators one replica takes (0 on the CPU)."""
        return 0 if self.on_cpu else self.parallelism.world_size

    @property
    def cpus_per_replica(self) -> float:
        """Logical CPUs of one replica's placement group."""
        return sum(b.get("CPU", 0.0) for b in self.bundles)


def plan_layout(model: ModelConfig, *, accelerators_per_node: int | None = None, nodes: int = 1,
                extra_accelerators: Iterable[AcceleratorSpec] = (), where: str = "models[?]") -> Layout:
    """Resolve `model`'s parallelism, bundles, strategy and executor for nodes of `accelerators_per_node`.

    accelerators_per_node: the cluster's (e.g. the largest live node's count); None takes
    placement.accelerators_per_node. nodes: how many such nodes the planner may use.
    On the CPU, auto is TP = PP = 1 and the executor mp (vLLM refuses its ray executor there);
    on GPUs a replica of one worker uses mp, a larger one ray.
    Raises LayoutError naming `<where>.parallelism` when auto cannot be planned.
    """
    p = model.placement
    per_node = accelerators_per_node or p.accelerators_per_node
    par = model.parallelism
    if par == "auto" and not p.on_cpu:
        if not (p.accelerator_type and per_node):
            raise LayoutError(f"{where}.parallelism", (
                "auto needs placement.accelerator_type and placement.accelerators_per_node (or a live cluster's "
                f"nodes) to plan a layout of {model.name!r}; set both, or give tensor / pipeline explicitly"))
        try:
            par, _ = resolve_parallelism(model, nodes=max(1, nodes), gpus_per_node=per_node,
                                         accelerator=p.accelerator_type, extra_accelerators=extra_accelerators)
        except PlannerError as e:
            raise LayoutError(f"{where}.parallelism", f"auto: {e}; or give tensor / pipeline explicitly") from None
    elif par == "auto":
        par = Parallelism()
    executor = p.executor
    if executor == "auto":
        executor = "mp" if p.on_cpu or par.world_size == 1 else "ray"
    return Layout(parallelism=par, bundles=tuple(bundles_for(par, p)),
                  strategy=strategy_for(par, p, accelerators_per_node=per_node), executor=executor, on_cpu=p.on_cpu)


def plan_layouts(models: Sequence[ModelConfig], **kwargs) -> list[Layout]:
    """plan_layout for each model, `where` set to its index."""
    return [plan_layout(m, where=f"models[{i}]", **kwargs) for i, m in enumerate(models)]
