"""KubeRay on Kubernetes: render the config into a RayService / RayCluster, validate it against the
CRD schemas, and apply / read / diff it with the kubernetes client.

Pure modules (no ray, vllm or locust): layout (worker group sizing), render, schema (needs
jsonschema), dashboard, examples. `client` and `cli` add the kubernetes client; import
`schema`, `client` and `cli` explicitly.
"""

from cluster.k8s.errors import K8sError, RenderError, SchemaError
from cluster.k8s.layout import WorkerLayout, per_pod_share, worker_layouts
from cluster.k8s.render import render_raycluster, render_rayservice, serve_config_v2, to_yaml

__all__ = [
    "K8sError", "RenderError", "SchemaError", "WorkerLayout", "per_pod_share", "render_raycluster",
    "render_rayservice", "serve_config_v2", "to_yaml", "worker_layouts",
]
