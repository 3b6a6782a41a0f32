"""Render the app config into a KubeRay RayService (and a RayCluster for development).

Pure: config in, plain dicts out (no ray, vllm or kubernetes imports). The same AppConfig that
`serve run` uses is embedded as the Serve builder's args, so the cluster serves exactly the
config that was rendered:

    AppConfig ──► worker_layouts (GPUs per pod, replica-aligned pod counts)   layout.py
        │                 │
        │                 ▼
        │         head group (no GPUs) + one GPU worker group per model
        ▼                 │
    serveConfigV2 ────────┴──► RayService {serveConfigV2, rayClusterConfig, upgradeStrategy}
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from cluster.k8s.errors import RenderError
from cluster.k8s.layout import WorkerLayout, resolve_for_kubernetes, worker_layouts
from cluster.ray_env import fast_path_env
from serve_app.schema import TINY_PREFIX, AppConfig, KubernetesConfig

__all__ = [
    "API_VERSION",
    "SERVE_IMPORT_PATH",
    "render_raycluster",
    "render_rayservice",
    "serve_config_v2",
    "to_yaml",
]

API_VERSION = "ray.io/v1"
SERVE_IMPORT_PATH = "serve_app.config:build_app"
API_KEYS_ENV = "FLEETSERVE_API_KEYS"  # the env var every pod gets from kubernetes.api_keys_secret
GPU_RESOURCE = "nvidia.com/gpu"
_SHM_VOLUME = "dshm"
_CACHE_VOLUME = "model-cache"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def render_rayservice(config: AppConfig) -> dict[str, Any]:
    """Return the RayService manifest serving `config` (raises RenderError naming the field)."""
    _check_renderable(config)
    config = resolve_for_kubernetes(config)
    kube = config.kubernetes
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(config.name, kube, component="rayservice"),
        "spec": {
            "upgradeStrategy": {"type": kube.upgrade_strategy},
            "serveConfigV2": serve_config_v2(config),
            "rayClusterConfig": _ray_cluster_spec(config, worker_layouts(config), instance=config.name),
        },
    }


def render_raycluster(config: AppConfig, *, name_suffix: str = "-dev") -> dict[str, Any]:
    """Return a RayCluster with the RayService's head and worker groups, for `serve run` by hand."""
    _check_renderable(config)
    name = f"{config.name}{name_suffix}"
    if not _DNS_1035.match(name) or len(name) > 63:
        raise RenderError("name", f"{name!r} is not a valid RayCluster name (DNS-1035 label, at most 63 characters)")
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": _metadata(name, config.kubernetes, component="raycluster"),
        "spec": _ray_cluster_spec(config, worker_layouts(config), instance=name),
    }


def serve_config_v2(config: AppConfig) -> str:
    """Return the Serve config (YAML text) that imports the builder with the config as its args.

    `parallelism: auto` is written out as the layout the pods are sized for.
    """
    config = resolve_for_kubernetes(config)
    args = config.model_dump(mode="json", exclude_defaults=True, exclude={"kubernetes", "api_keys"})
    if config.kubernetes.api_keys_secret is not None:
        args["api_keys_env"] = API_KEYS_ENV  # set from the Secret in every pod (_api_keys_env)
    http: dict[str, Any] = {"host": "0.0.0.0", "port": config.http.port}  # reachable from the Service
    if config.http.request_timeout_s is not None:
        http["request_timeout_s"] = config.http.request_timeout_s
    serve = {
        "http_options": http,
        "applications": [
            {"name": config.name, "route_prefix": "/", "import_path": SERVE_IMPORT_PATH, "args": {"config": args}},
        ],
    }
    return to_yaml(serve)


def to_yaml(obj: Any) -> str:
    """Dump `obj` as block YAML in insertion order (deterministic, so golden files stay stable).

    Multi-line strings (serveConfigV2) become literal `|` blocks, readable in the manifest.
    """
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


# ---- checks that depend on Kubernetes, not on the config alone ------------------------------------------


def _check_renderable(config: AppConfig) -> None:
    if not _DNS_1035.match(config.name):
        raise RenderError(
            "name", f"{config.name!r} must start with a letter: KubeRay names Services after it (DNS-1035 label)"
        )
    if config.api_keys:
        raise RenderError(
            "api_keys",
            "would be written in plain text into serveConfigV2; the manifest must hold no secrets. "
            "Put the keys in a Secret and set kubernetes.api_keys_secret: {secret_name: ...}",
        )
    if config.api_keys_env or config.api_keys_file:
        field = "api_keys_env" if config.api_keys_env else "api_keys_file"
        raise RenderError(field, "is not set in the rendered pods; set kubernetes.api_keys_secret and the pods "
                          f"read the keys from that Secret (as ${API_KEYS_ENV})")
    kube = config.kubernetes
    for i, m in enumerate(config.models):
        if m.source.startswith(TINY_PREFIX):
            raise RenderError(f"models[{i}].source", f"{m.source!r} is built on this machine only; use a hub id "
                              f"(org/name) or an absolute path under kubernetes.model_cache.mount_path")
        if m.source.startswith((".", "~")):
            raise RenderError(f"models[{i}].source", f"{m.source!r} is relative to this machine; use a hub id "
                              "or an absolute path that exists in the worker pods")
        t = m.placement.accelerator_type
        if m.placement.accelerator.upper() == "GPU" and t is not None and t not in kube.accelerators:
            raise RenderError(
                f"models[{i}].placement.accelerator_type",
                f"{t!r} has no entry in kubernetes.accelerators ({', '.join(sorted(kube.accelerators)) or 'empty'}); "
                f"add kubernetes.accelerators.{t} with the node_selector of those nodes",
            )


# ---- the RayCluster spec ----------------------------------------------------------------------------------


def _ray_cluster_spec(config: AppConfig, layouts: list[WorkerLayout], *, instance: str) -> dict[str, Any]:
    kube = config.kubernetes
    return {
        "rayVersion": kube.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            # A node idles out only after a model's cold start would have paid for itself (config rule).
            "idleTimeoutSeconds": kube.autoscaler_idle_timeout_s,
            "upscalingMode": kube.autoscaler_upscaling_mode,
        },
        "headGroupSpec": _head_group(config, instance=instance),
        "workerGroupSpecs": [_worker_group(config, layout, instance=instance) for layout in layouts],
    }


def _head_group(config: AppConfig, *, instance: str) -> dict[str, Any]:
    kube = config.kubernetes
    # num-gpus 0: CUDA images set NVIDIA_VISIBLE_DEVICES=all, so a head on a GPU node would see GPUs.
    params = {"num-gpus": "0", **kube.head_ray_start_params}
    container = {
        "name": "ray-head",
        "image": kube.image,
        "imagePullPolicy": kube.image_pull_policy,
        "ports": [
            {"name": "gcs-server", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
            {"name": "serve", "containerPort": config.http.port},
            {"name": "metrics", "containerPort": 8080},
        ],
        "env": [*_api_keys_env(kube), *_serve_env(config)],  # the router replica may run on the head
        "resources": _resources(kube.head_cpus, kube.head_memory_gib, gpus=0),
        "volumeMounts": [{"name": _SHM_VOLUME, "mountPath": "/dev/shm"}],
    }
    return {
        "rayStartParams": dict(sorted(params.items())),
        "template": {
            "metadata": {"labels": _labels(instance, component="head")},
            "spec": _pod_spec(kube, container, volumes=[_shm_volume(kube.head_shm_size_gib)]),
        },
    }


def _worker_group(config: AppConfig, layout: WorkerLayout, *, instance: str) -> dict[str, Any]:
    kube = config.kubernetes
    nodes = None
    if layout.on_gpu:
        t = layout.accelerator_type
        nodes = kube.accelerators[t] if t is not None else kube.default_gpu_nodes
    cache = kube.model_cache
    container = {
        "name": "ray-worker",
        "image": kube.image,
        "imagePullPolicy": kube.image_pull_policy,
        "env": [_hf_token_env(kube), *_api_keys_env(kube), {"name": "HF_HOME", "value": cache.mount_path},
                *_serve_env(config)],
        "resources": _resources(
            layout.cpus_per_pod, layout.memory_gib_per_pod, gpus=layout.accelerators_per_pod if layout.on_gpu else 0
        ),
        "volumeMounts": [
            {"name": _SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": _CACHE_VOLUME, "mountPath": cache.mount_path},
        ],
    }
    spec = _pod_spec(kube, container, volumes=[_shm_volume(kube.worker_shm_size_gib), _cache_volume(kube)])
    if nodes is not None:
        if nodes.node_selector:
            spec["nodeSelector"] = dict(sorted(nodes.node_selector.items()))
        if nodes.tolerations:
            spec["tolerations"] = [t.model_dump(exclude_none=True) for t in nodes.tolerations]
    group: dict[str, Any] = {
        "groupName": layout.group_name,
        # Pod counts are whole replicas: pods_per_replica pods hold one replica's placement group.
        "replicas": layout.start_pods,
        "minReplicas": layout.min_pods,
        "maxReplicas": layout.max_pods,
        "rayStartParams": dict(sorted(kube.worker_ray_start_params.items())),
    }
    if nodes is not None and nodes.advertise_accelerator_type:
        group["resources"] = {f"accelerator_type:{layout.accelerator_type}": "1"}
    group["template"] = {
        "metadata": {"labels": {**_labels(instance, component="worker"), "fleetserve.io/worker-group": layout.group_name}},
        "spec": spec,
    }
    return group


def _pod_spec(kube: KubernetesConfig, container: dict[str, Any], *, volumes: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if kube.service_account_name:
        spec["serviceAccountName"] = kube.service_account_name
    return spec


def _serve_env(config: AppConfig) -> list[dict[str, str]]:
    # Serve reads its mode from the environment of every Ray process: head and workers alike.
    return [{"name": k, "value": v} for k, v in sorted(fast_path_env(config).items())]


def _api_keys_env(kube: KubernetesConfig) -> list[dict[str, Any]]:
    if kube.api_keys_secret is None:
        return []
    ref = {"name": kube.api_keys_secret.secret_name, "key": kube.api_keys_secret.secret_key}
    return [{"name": API_KEYS_ENV, "valueFrom": {"secretKeyRef": ref}}]


def _hf_token_env(kube: KubernetesConfig) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": kube.hf_token.secret_name, "key": kube.hf_token.secret_key}
    if kube.hf_token.optional:
        ref["optional"] = True
    return {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}}


def _shm_volume(size_gib: float) -> dict[str, Any]:
    # Memory-backed: NCCL and Ray's object store need far more than the runtime's 64 MiB /dev/shm.
    return {"name": _SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": _gib(size_gib)}}


def _cache_volume(kube: KubernetesConfig) -> dict[str, Any]:
    cache = kube.model_cache
    if cache.kind == "pvc":
        return {"name": _CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.pvc_claim_name}}
    if cache.kind == "host_path":
        return {"name": _CACHE_VOLUME, "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    return {"name": _CACHE_VOLUME, "emptyDir": {}}


def _resources(cpus: float, memory_gib: float, *, gpus: int) -> dict[str, Any]:
    # requests == limits: Guaranteed QoS, and GPUs must be equal in both anyway.
    amounts = {"cpu": _cpu(cpus), "memory": _gib(memory_gib)}
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _metadata(name: str, kube: KubernetesConfig, *, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": kube.namespace, "labels": _labels(name, component=component)}


def _labels(instance: str, *, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "fleetserve",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "fleetserve",
    }


def _cpu(cores: float) -> str:
    return str(int(cores)) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def _gib(gib: float) -> str:
    return f"{int(gib)}Gi" if float(gib).is_integer() else f"{round(gib * 1024)}Mi"
