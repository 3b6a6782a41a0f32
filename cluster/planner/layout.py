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

__all__ = ["Layout", "LayoutError", "auto_front_ends", "plan_layout", "plan_layouts"]


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
    front_ends: int = 1  # OpenAI front-end processes per engine; bundle 0 holds a CPU for each beyond the first

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
    bundles = bundles_for(par, p)
    if model.front_ends != "auto":
        front_ends = model.front_ends
    else:  # the simulator has no OpenAI front end to multiply
        front_ends = auto_front_ends(bundles, on_cpu=p.on_cpu) if model.engine == "vllm" else 1
    # The extra front ends are processes of the replica actor, which sits in bundle 0: reserve their CPUs there.
    bundles[0] = {**bundles[0], "CPU": bundles[0].get("CPU", 0.0) + (front_ends - 1)}
    return Layout(parallelism=par, bundles=tuple(bundles), strategy=strategy_for(par, p, accelerators_per_node=per_node),
                  executor=executor, on_cpu=p.on_cpu, front_ends=front_ends)


def auto_front_ends(bundles: Sequence[dict[str, float]], *, on_cpu: bool) -> int:
    """`front_ends: auto`: 1 with CPU engine workers (their cores run the model), else one per 8 bundle CPUs, 1-8.

    Why per 8: at ~120 us of front-end CPU per output token (bench/serving_overhead.py, c=32 on the
    Xeon box) one process tops out near 8,000 output tokens/s, about what 8 GPUs of a large MoE
    generate, and a replica given 8 CPUs per GPU-node slice is one that expects to need them.
    """
    if on_cpu:
        return 1
    cpus = sum(b.get("CPU", 0.0) for b in bundles)
    return max(1, min(8, int(cpus // 8)))


def plan_layouts(models: Sequence[ModelConfig], **kwargs) -> list[Layout]:
    """plan_layout for each model, `where` set to its index."""
    return [plan_layout(m, where=f"models[{i}]", **kwargs) for i, m in enumerate(models)]
