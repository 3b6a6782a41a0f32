"""The one Ray lifecycle: start or join, size, fast-path environment, deploy, shut down.

    fleetserve serve ─┐                          ┌─► $RAY_ADDRESS / address: join (never stopped here)
    serve run ────────┤                          │
    build_app ────────┼─► ensure_ray(config) ────┼─► none: a fresh local Ray (address="local"), sized
    the sweep ────────┤     (RaySession)         │     for the config's layouts, fast-path env set first,
    bench/ ───────────┘                          │     dashboard only with local_ray.dashboard
                                                 └─► local_nodes > 0: a local multi-node cluster
    start_serve(...) ─► deploy(app, name, wait=...) ─► ... ─► RaySession.close()

Public Ray and Serve APIs only (serve.run, serve.run_many, serve.status); a test keeps
`ray.serve._private` and `serve._run` out of shipped code. Ray and Serve are imported inside the
functions, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from cluster.planner.layout import plan_layout
from cluster.ray_env import free_local_port, local_fast_path_env
from serve_app.schema import AppConfig

__all__ = ["RaySession", "ensure_ray", "ray_session", "local_ray_cpus", "apply_ray_env", "start_serve", "deploy",
           "metrics_url", "probe_url"]

NAMESPACE = "serve"


@dataclass
class RaySession:
    """What ensure_ray did: `label` says where Ray runs; `close()` undoes only what this process started."""

    label: str
    started: bool = False  # this process started the Ray (and its Serve): close() stops them
    joined: bool = False  # this process connected to a running cluster: close() only disconnects
    _cluster: Any = field(default=None, repr=False)  # ray.cluster_utils.Cluster for local_nodes

    def close(self, *, stop_serve: bool | None = None) -> None:
        """Stop the Serve and Ray this session started; disconnect from a joined cluster.

        stop_serve: also shut Serve down (its apps go) on a joined cluster; default only when started here.
        """
        import ray

        if self.started if stop_serve is None else stop_serve:
            from ray import serve

            serve.shutdown()
        if self.started or self.joined:
            ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()


def local_ray_cpus(configs: AppConfig | Sequence[AppConfig]) -> int:
    """Logical CPUs a local Ray needs for the largest of `configs`: every replica at max_replicas, plus 2 for Serve.

    Each model counts its resolved layout's bundles (an `auto` model as many workers as the planner
    gives it, not one; bundle 0 with a CPU per extra front end). Logical CPUs: vLLM's CPU workers pin
    their own threads, Ray's count is bookkeeping.
    """
    configs = [configs] if isinstance(configs, AppConfig) else list(configs)
    need = 0.0
    for cfg in configs:
        total = 0.0
        for i, m in enumerate(cfg.models):
            layout = plan_layout(m, extra_accelerators=cfg.accelerators, where=f"models[{i}]")
            total += layout.cpus_per_replica * m.autoscaling.max_replicas  # bundles as asked, front ends' CPUs included
        need = max(need, total)
    return max(os.cpu_count() or 1, int(need) + 2)


def apply_ray_env(env: dict[str, str]) -> None:
    """Set `env` for the Ray processes this process starts next.

    A user's own setting wins, except for ports: they are this instance's own, and one left by an
    earlier Ray would be shared.
    """
    for key, value in env.items():
        if key.endswith("_PORT") or key not in os.environ:
            os.environ[key] = value


def ensure_ray(config: AppConfig, *, address: str | None = None, local_nodes: int = 0, cpus_per_node: float = 2,
               size_for: Sequence[AppConfig] = (), init_kwargs: dict[str, Any] | None = None) -> RaySession:
    """Connect to `address` (else $RAY_ADDRESS), or start a local Ray sized for `config`; return the session.

    address "local" (or none) starts a fresh local Ray with the config's fast-path environment and
    Ray's dashboard only when `local_ray.dashboard`; `local_nodes` > 0 starts a local multi-node
    cluster (a head and local_nodes - 1 workers of `cpus_per_node` logical CPUs) to try multi-node
    layouts on one machine. `size_for`: more configs the local Ray must fit one at a time (the
    sweep's strategies). `init_kwargs` adds to (or overrides) the local ray.init's arguments (bench/).
    Already connected: nothing is done (label "connected").
    Raises ValueError when local_nodes is combined with a cluster address.
    """
    import ray

    if ray.is_initialized():
        return RaySession(label="connected")
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        if local_nodes:
            raise ValueError("local_nodes starts a cluster here; it cannot be combined with a cluster address "
                             f"({address!r}: --address or $RAY_ADDRESS)")
        ray.init(address=address, namespace=NAMESPACE)
        return RaySession(label=address, joined=True)
    apply_ray_env(local_fast_path_env(config))
    dashboard = config.local_ray.dashboard
    if local_nodes:
        from ray.cluster_utils import Cluster

        head: dict[str, Any] = {"num_cpus": cpus_per_node, "include_dashboard": dashboard}
        if dashboard:  # a free port: the default 8265 may belong to another Ray on this machine
            head["dashboard_port"] = free_local_port()
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(local_nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE)
        return RaySession(label=f"local cluster: {local_nodes} nodes x {cpus_per_node:g} CPUs", started=True,
                          _cluster=cluster)
    # address="local": never attach to some other Ray that happens to run on this machine.
    # Ray's metrics export port is this node's one Prometheus endpoint (serve_app.telemetry.metrics);
    # a free one unless the config names it, as another Ray on this machine may hold Ray's default.
    kwargs = {"num_cpus": local_ray_cpus([config, *size_for]), "include_dashboard": dashboard,
              "_metrics_export_port": config.local_ray.metrics_export_port or free_local_port(), **(init_kwargs or {})}
    ray.init(address="local", namespace=NAMESPACE, **kwargs)
    return RaySession(label="local", started=True)


@contextlib.contextmanager
def ray_session(config: AppConfig, **kwargs: Any) -> Iterator[RaySession]:
    """`ensure_ray(config, **kwargs)` for a block; on exit, stop what it started (see RaySession.close)."""
    session = ensure_ray(config, **kwargs)
    try:
        yield session
    finally:
        session.close()


def start_serve(*, host: str, port: int, request_timeout_s: float | None = None) -> None:
    """Start Serve with its HTTP front at host:port on the head node (a no-op, with Serve's warning, if it runs)."""
    from ray import serve

    http: dict[str, Any] = {"host": host, "port": port}
    if request_timeout_s is not None:
        http["request_timeout_s"] = request_timeout_s
    serve.start(http_options=http, proxy_location="HeadOnly")


def deploy(app: Any, *, name: str, wait: bool = True) -> None:
    """Deploy a Serve application at route "/"; with `wait`, return once it is RUNNING (no deadline).

    wait=False returns once the deploy is submitted, for a caller that polls `serve.status()` with
    its own deadline (Serve's public `run_many` without its waits).
    """
    from ray import serve

    if wait:
        serve.run(app, name=name, route_prefix="/")
    else:
        serve.run_many([serve.RunTarget(app, name=name, route_prefix="/")],
                       wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)


def metrics_url(session: RaySession) -> str | None:
    """This node's Prometheus endpoint (Ray's metrics export port), or None when Ray does not report one.

    Every node of a cluster exports its own processes' series on its own port; this is the one of
    the node this process runs on (127.0.0.1 when this process started the Ray).
    """
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            host = "127.0.0.1" if session.started else node["NodeManagerAddress"]
            return f"http://{host}:{node['MetricsExportPort']}/metrics"
    return None


def probe_url(candidates: Sequence[str], *, path: str = "/health", timeout_s: float = 30.0) -> str | None:
    """Return the first of `candidates` (base URLs) that answers GET `path` with 200 before the deadline, else None."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        for url in candidates:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url.rstrip("/") + path, timeout=2).status_code == 200:
                    return url
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)
