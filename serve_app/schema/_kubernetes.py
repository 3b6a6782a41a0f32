"""Kubernetes section of the config: what KubeRay manifests need beyond the app itself.

Only settings that exist because the app runs on Kubernetes live here (namespace, image, pod
sizes, node placement, secrets, volumes, KubeRay autoscaler and upgrade knobs). GPU counts per
pod are not settings: cluster/k8s derives them from each model's parallelism and placement.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serve_app.schema._base import Frozen
from serve_app.errors import FieldError

__all__ = ["AcceleratorNodes", "ApiKeysSecret", "HfTokenSecret", "KubernetesConfig", "ModelCache", "Toleration"]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# rayStartParams the renderer sets itself: giving them here would let the two disagree.
RESERVED_RAY_START_PARAMS: dict[str, str] = {
    "num-gpus": "the head has no GPUs; workers get theirs from the per-pod share of each model's TP x PP layout",
}


class Toleration(Frozen):
    """One pod toleration (Kubernetes `tolerations[]`)."""

    key: str = Field(..., min_length=1, description="Taint key to tolerate, e.g. nvidia.com/gpu.")
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists matches any value; Equal needs `value`.")
    value: str | None = Field(None, description="Taint value, for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        "NoSchedule", description="Taint effect to tolerate; none tolerates every effect."
    )

    @model_validator(mode="after")
    def _value_matches_operator(self) -> "Toleration":
        if self.operator == "Equal" and self.value is None:
            raise FieldError("value", f"operator Equal needs a value to compare taint {self.key!r} with; set value or use Exists")
        if self.operator == "Exists" and self.value is not None:
            raise FieldError("value", f"operator Exists matches any value of {self.key!r}; drop value={self.value!r} or use Equal")
        return self


_GPU_TAINT = (Toleration(key="nvidia.com/gpu"),)


class AcceleratorNodes(Frozen):
    """Which nodes carry one accelerator type: node selector and the taints GPU pods tolerate."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels a worker pod must match.")
    tolerations: tuple[Toleration, ...] = Field(_GPU_TAINT, description="Taints worker pods tolerate on those nodes.")
    advertise_accelerator_type: bool = Field(
        False,
        description="Give these workers the Ray resource accelerator_type:<key> explicitly. Ray detects only the GPU "
        "family (A100, H100, L4), so sized types such as A100-40G need it.",
    )


def _gke(label_value: str, *, advertise: bool = False) -> AcceleratorNodes:
    return AcceleratorNodes(node_selector={"cloud.google.com/gke-accelerator": label_value}, advertise_accelerator_type=advertise)


# Keys are Ray accelerator types (models[].placement.accelerator_type). Node labels are GKE's;
# other clouds or the GPU operator's nvidia.com/gpu.product label need an override.
DEFAULT_ACCELERATORS: dict[str, AcceleratorNodes] = {
    "L4": _gke("nvidia-l4"),
    "A100-40G": _gke("nvidia-tesla-a100", advertise=True),
    "A100-80G": _gke("nvidia-a100-80gb", advertise=True),
    "H100": _gke("nvidia-h100-80gb"),
    "H200": _gke("nvidia-h200-141gb"),
}


class HfTokenSecret(Frozen):
    """The Secret holding the Hugging Face token; the manifest references it, never contains it."""

    secret_name: str = Field("hf-token", pattern=_DNS_SUBDOMAIN, max_length=253, description="Secret name in the namespace.")
    secret_key: str = Field("token", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key of the token in the Secret.")
    optional: bool = Field(
        False, description="Start pods without the Secret (public models only); gated models then fail to download."
    )


class ApiKeysSecret(Frozen):
    """The Secret holding the app's API keys; every pod reads it as an env var, the manifest never holds a key."""

    secret_name: str = Field(..., pattern=_DNS_SUBDOMAIN, max_length=253, description="Secret name in the namespace.")
    secret_key: str = Field("keys", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description=(
        "Key in the Secret whose value holds the API keys, comma or newline separated."))


class ModelCache(Frozen):
    """Where downloaded weights persist between pod restarts (HF_HOME points here)."""

    kind: Literal["host_path", "pvc", "empty_dir"] = Field(
        "host_path",
        description="host_path: one cache per node, no storage class needed; pvc: a shared PersistentVolumeClaim; "
        "empty_dir: pod-local, lost on restart (every cold start downloads again).",
    )
    host_path: str = Field(
        "/mnt/fleetserve-model-cache", pattern=r"^/", description="Node directory for kind host_path (created if absent)."
    )
    pvc_claim_name: str | None = Field(
        None, pattern=_DNS_SUBDOMAIN, description="Claim for kind pvc (ReadWriteMany when pods span nodes)."
    )
    mount_path: str = Field("/model-cache", pattern=r"^/", description="Where the cache is mounted in worker containers.")

    @model_validator(mode="after")
    def _claim_matches_kind(self) -> "ModelCache":
        if self.kind == "pvc" and not self.pvc_claim_name:
            raise FieldError("pvc_claim_name", "kind pvc needs pvc_claim_name (an existing PersistentVolumeClaim); set it")
        if self.kind != "pvc" and self.pvc_claim_name:
            raise FieldError(
                "kind", f"pvc_claim_name={self.pvc_claim_name!r} is set but kind={self.kind!r}; set kind: pvc or drop the claim"
            )
        return self


class KubernetesConfig(Frozen):
    """How the app runs as a KubeRay RayService: pods, placement, secrets, volumes, autoscaler, upgrades."""

    namespace: str = Field("default", pattern=_DNS_LABEL, max_length=63, description="Namespace of the RayService.")
    image: str = Field(
        "fleetserve:0.1.0", min_length=1,
        description="Image with Ray, vLLM and this package installed (serve_app importable) for head and workers.",
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        "IfNotPresent", description="Pull policy of every container."
    )
    ray_version: str = Field(
        "2.60.0", pattern=r"^\d+\.\d+\.\d+$", description="Ray version in the image (rayClusterConfig.rayVersion)."
    )
    service_account_name: str | None = Field(None, pattern=_DNS_SUBDOMAIN, description="ServiceAccount of head and worker pods.")
    head_cpus: float = Field(4.0, gt=0, description="CPU cores requested (and limited) for the head pod; it runs no GPU work.")
    head_memory_gib: float = Field(32.0, gt=0, description="Memory for the head pod in GiB (Serve controller, proxy, GCS).")
    head_ray_start_params: dict[str, str] = Field(
        default_factory=lambda: {"dashboard-host": "0.0.0.0"},
        description="Extra `ray start` flags of the head (without --); num-gpus is always 0.",
    )
    worker_cpus_per_accelerator: float = Field(
        8.0, gt=0, description="CPU cores per accelerator in a worker pod (pod CPUs = this x accelerators in the pod); "
        "a pod must hold the replica's bundle 0 with its extra front ends (models[].front_ends) and the rest of its share."
    )
    worker_memory_gib_per_accelerator: float = Field(
        64.0, gt=0, description="Host memory in GiB per accelerator in a worker pod (weights pass through it on load)."
    )
    worker_ray_start_params: dict[str, str] = Field(
        default_factory=dict, description="Extra `ray start` flags of every worker (without --); GPUs come from the layout."
    )
    accelerators: dict[str, AcceleratorNodes] = Field(
        default_factory=lambda: dict(DEFAULT_ACCELERATORS),
        description="Node selector and tolerations per Ray accelerator type (models[].placement.accelerator_type). "
        "Replaces the built-in GKE entries when given.",
    )
    default_gpu_nodes: AcceleratorNodes = Field(
        default_factory=AcceleratorNodes,
        description="Node selector and tolerations of GPU workers whose model sets no accelerator_type.",
    )
    hf_token: HfTokenSecret = Field(default_factory=HfTokenSecret, description="Secret with the Hugging Face token.")
    api_keys_secret: ApiKeysSecret | None = Field(None, description=(
        "Secret with the app's API keys (rendered as env FLEETSERVE_API_KEYS from a secretKeyRef in every pod, and "
        "api_keys_env in the app's config). Without it the RayService serves without keys."))
    model_cache: ModelCache = Field(default_factory=ModelCache, description="Volume where weights are downloaded once.")
    head_shm_size_gib: float = Field(
        8.0, gt=0, description="Size in GiB of the head pod's memory-backed /dev/shm (Ray's object store)."
    )
    worker_shm_size_gib: float = Field(
        16.0, gt=0,
        description="Size in GiB of each worker pod's memory-backed /dev/shm (NCCL buffers, Ray's object store).",
    )
    model_cold_start_s: int = Field(
        600, gt=0, description="Expected seconds from a new GPU pod to a serving replica: node, image pull, weights, warm-up."
    )
    autoscaler_idle_timeout_s: int = Field(
        900, gt=0, le=2**31 - 1,
        description="Seconds a worker node stays idle before the Ray autoscaler removes it; at least model_cold_start_s.",
    )
    autoscaler_upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = Field(
        "Default", description="Ray autoscaler upscaling speed (autoscalerOptions.upscalingMode)."
    )
    upgrade_strategy: Literal["NewCluster", "None"] = Field(
        "NewCluster",
        description="How KubeRay rolls out a changed RayService: NewCluster = blue/green onto a new RayCluster "
        "(needs room for both), None = update in place only what Serve can.",
    )

    @model_validator(mode="after")
    def _rules(self) -> "KubernetesConfig":
        if self.autoscaler_idle_timeout_s < self.model_cold_start_s:
            raise FieldError(
                "autoscaler_idle_timeout_s",
                f"autoscaler_idle_timeout_s ({self.autoscaler_idle_timeout_s}) must be >= model_cold_start_s "
                f"({self.model_cold_start_s}): a node removed during a short lull costs a full cold start to bring back; "
                "raise the idle timeout or lower the cold-start estimate",
            )
        for field in ("head_ray_start_params", "worker_ray_start_params"):
            for key in getattr(self, field):
                why = RESERVED_RAY_START_PARAMS.get(key.lstrip("-").replace("_", "-"))
                if why:
                    raise FieldError(f"{field}.{key}", f"is set by the renderer ({why}); remove it")
        for shm, pod in (("head_shm_size_gib", "head_memory_gib"), ("worker_shm_size_gib", "worker_memory_gib_per_accelerator")):
            if getattr(self, shm) >= getattr(self, pod):
                raise FieldError(
                    shm,
                    f"{shm} ({getattr(self, shm):g}) must be < {pod} ({getattr(self, pod):g}): a memory-backed /dev/shm "
                    "counts against the pod's memory limit; lower it or raise the memory",
                )
        return self
