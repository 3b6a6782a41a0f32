"""Size one KubeRay worker group per model so that every replica's placement group fits whole pods.

Pure arithmetic over the config. A replica needs tensor x pipeline accelerators (one placement-
group bundle each). A pod is one Ray node, so it holds the per-node share of that layout:

    TP x PP fits a node (or the node size is unknown)  ->  one pod = one whole replica
    else, TP fits a node                                ->  one pod = TP x k stages (k | PP, as many as fit)
    else (TP spans nodes, TP a multiple of node size)   ->  one pod = one full node

and the group's pod counts are whole multiples of pods_per_replica, so the Ray autoscaler never
holds a pod that no replica can use. A pod's CPUs (kubernetes.worker_cpus_per_accelerator x its
accelerators) must hold the share of the replica's bundles that includes bundle 0, where the
replica's extra front ends sit (_check_pod_cpus).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cluster.k8s.errors import RenderError
from cluster.planner import Layout, LayoutError, plan_layout
from serve_app.schema import AppConfig, KubernetesConfig, ModelConfig

__all__ = [
    "WorkerLayout", "gpus_per_replica", "group_name_for", "per_pod_share", "resolve_for_kubernetes", "worker_layout",
    "worker_layouts",
]


@dataclass(frozen=True)
class WorkerLayout:
    """One model's worker group: pod shape and replica-aligned pod counts."""

    model: str
    group_name: str
    on_gpu: bool
    accelerators_per_pod: int  # GPUs per pod (engine workers per pod on the CPU)
    pods_per_replica: int
    min_pods: int
    max_pods: int
    start_pods: int
    cpus_per_pod: float
    memory_gib_per_pod: float
    accelerator_type: str | None


def per_pod_share(tensor: int, pipeline: int, accelerators_per_node: int | None) -> tuple[int, int]:
    """Return (accelerators per pod, pods per replica) for a TP x PP replica on nodes of that size.

    Raises ValueError when tensor spans nodes without being a multiple of the node size.
    """
    world = tensor * pipeline
    if accelerators_per_node is None or world <= accelerators_per_node:
        return world, 1
    if tensor <= accelerators_per_node:
        # whole pipeline stages per pod; k must divide PP so every pod of a replica looks the same
        stages = max(k for k in range(1, pipeline + 1) if pipeline % k == 0 and k * tensor <= accelerators_per_node)
        return tensor * stages, pipeline // stages
    if tensor % accelerators_per_node:
        raise ValueError(
            f"tensor={tensor} spans nodes of {accelerators_per_node} accelerators but is not a multiple of it"
        )
    return accelerators_per_node, world // accelerators_per_node


def group_name_for(model_name: str) -> str:
    """Return a DNS-label-safe worker group name for a served model name."""
    name = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[:40].rstrip("-")
    return name or "model"


def resolve_for_kubernetes(config: AppConfig) -> AppConfig:
    """Return `config` with every `parallelism: auto` and `front_ends: auto` replaced by the planner's choice.

    Pods are sized before any GPU node exists, so the plan is made here, for one node of
    `placement.accelerators_per_node` x `placement.accelerator_type`, and the rendered Serve
    config pins it: the cluster runs exactly the layout (and the front-end count, whose CPUs are
    in the pod) its pods were sized for, never a re-resolved `auto`.
    Raises RenderError when the plan cannot be made.
    """
    if not any(_has_auto(m) for m in config.models):
        return config
    models = []
    for i, m in enumerate(config.models):
        if _has_auto(m):
            layout = _planned(m, config, index=i)
            m = m.model_copy(update={"parallelism": layout.parallelism, "front_ends": layout.front_ends})
        models.append(m)
    return config.model_copy(update={"models": tuple(models)})


def _has_auto(model: ModelConfig) -> bool:
    return model.parallelism == "auto" or model.front_ends == "auto"


def _planned(model: ModelConfig, config: AppConfig, *, index: int) -> Layout:
    # Pods are sized before any GPU node exists: plan for one node of the config's accelerators.
    try:
        return plan_layout(model, extra_accelerators=config.accelerators, where=f"models[{index}]")
    except LayoutError as e:
        raise RenderError(e.field, e.message) from None


def worker_layout(model: ModelConfig, kube: KubernetesConfig, *, index: int) -> WorkerLayout:
    """Size the worker group of `model` (models[index] of a config passed through resolve_for_kubernetes).

    Raises RenderError naming the config field when the layout cannot be placed in pods.
    """
    where = f"models[{index}]"
    p, par = model.placement, model.parallelism
    for field in ("parallelism", "front_ends"):
        if getattr(model, field) == "auto":
            raise RenderError(f"{where}.{field}", "auto must be resolved first (resolve_for_kubernetes)")
    accel = p.accelerator.upper()
    if accel not in ("GPU", "CPU"):
        raise RenderError(
            f"{where}.placement.accelerator",
            f"{p.accelerator!r} has no Kubernetes resource here; use GPU (nvidia.com/gpu) or CPU",
        )
    on_gpu = accel == "GPU"
    try:
        per_pod, pods_per_replica = per_pod_share(par.tensor, par.pipeline, p.accelerators_per_node)
    except ValueError as e:
        raise RenderError(
            f"{where}.parallelism.tensor",
            f"{e}; set tensor to a multiple of placement.accelerators_per_node or keep it within one node",
        ) from None
    if pods_per_replica > 1 and p.strategy == "STRICT_PACK":
        raise RenderError(f"{where}.placement.strategy", "STRICT_PACK keeps a replica on one pod, but it needs "
                          f"{pods_per_replica} pods; use PACK or auto")
    cpus = kube.worker_cpus_per_accelerator * per_pod
    _check_pod_cpus(model, kube, per_pod=per_pod, cpus=cpus, where=where)
    if on_gpu and p.schedule_timeout_s < kube.model_cold_start_s:
        # KubeRay starts the group's pods with the RayService, but a cloud may need minutes to add a GPU
        # node; the app's placement probe must outwait that or the first deploy (and each upgrade) fails.
        raise RenderError(
            f"{where}.placement.schedule_timeout_s",
            f"{p.schedule_timeout_s:g} s is shorter than kubernetes.model_cold_start_s ({kube.model_cold_start_s} s): "
            "the placement probe would give up before a new GPU node joins; raise it to at least the cold start",
        )
    a = model.autoscaling
    return WorkerLayout(
        model=model.name,
        group_name=group_name_for(model.name),
        on_gpu=on_gpu,
        accelerators_per_pod=per_pod,
        pods_per_replica=pods_per_replica,
        min_pods=a.min_replicas * pods_per_replica,
        max_pods=a.max_replicas * pods_per_replica,
        start_pods=a.start_replicas * pods_per_replica,
        cpus_per_pod=cpus,
        memory_gib_per_pod=kube.worker_memory_gib_per_accelerator * per_pod,
        accelerator_type=p.accelerator_type,
    )


def _check_pod_cpus(model: ModelConfig, kube: KubernetesConfig, *, per_pod: int, cpus: float, where: str) -> None:
    """Raise RenderError unless a pod of `cpus` holds the share of a replica that includes bundle 0."""
    # Every pod of the group comes from one template and Ray picks the pod that gets bundle 0 (the
    # replica actor and its extra front ends, plan_layout), so every pod must fit that share: the
    # first per_pod bundles. On a replica over several pods the others keep front_ends - 1 CPUs
    # spare; that is the price of one worker group per model (a group of its own for the bundle-0
    # pod would need its own replica-aligned counts). The pod request stays this field times the
    # accelerators, not that plus the front ends: the field is sized to the GPU node's allocatable
    # CPUs, and a pod grown past it would fit no node. So the front ends must fit in it, or we say
    # by how much to raise it.
    bundles = plan_layout(model, where=where).bundles  # nothing auto is left: this resolves nothing
    need = sum(b.get("CPU", 0.0) for b in bundles[:per_pod])
    if cpus >= need:
        return
    extra = model.front_ends - 1
    to = math.ceil(need / per_pod * 1000) / 1000  # millicores, as the request is written
    why = f"{need - extra:g} for {per_pod} engine worker(s) at placement.cpus_per_worker={model.placement.cpus_per_worker:g}"
    if extra:
        why += f" + {extra} for {where}.front_ends={model.front_ends} beyond the first"
    raise RenderError(
        "kubernetes.worker_cpus_per_accelerator",
        f"{kube.worker_cpus_per_accelerator:g} x {per_pod} = {cpus:g} CPUs per pod of {model.name!r}, but the pod "
        f"holding the replica's bundle 0 needs {need:g} ({why}); raise it by {to - kube.worker_cpus_per_accelerator:g} "
        f"to {to:g}" + (f", or lower {where}.front_ends" if extra else ""),
    )


def worker_layouts(config: AppConfig) -> list[WorkerLayout]:
    """Size one worker group per model, in config order; group names are unique.

    `parallelism: auto` is resolved first (see resolve_for_kubernetes).
    """
    config = resolve_for_kubernetes(config)
    out: list[WorkerLayout] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(config.models):
        layout = worker_layout(m, config.kubernetes, index=i)
        if layout.group_name in seen:
            raise RenderError(
                f"models[{i}].name",
                f"{m.name!r} and models[{seen[layout.group_name]}] both map to worker group {layout.group_name!r}; "
                "rename one so the names differ in letters or digits",
            )
        seen[layout.group_name] = i
        out.append(layout)
    return out



def gpus_per_replica(layout: WorkerLayout) -> int:
    """Accelerators one replica takes across its pods."""
    return layout.accelerators_per_pod * layout.pods_per_replica
