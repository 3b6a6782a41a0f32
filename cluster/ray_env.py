"""Environment for the Ray processes that run the app (pure: used by the local launcher and the KubeRay renderer)."""

from __future__ import annotations

import socket

from serve_app.config import AppConfig

__all__ = ["fast_path_env", "free_local_port", "haproxy_ports_env", "local_fast_path_env"]


def fast_path_env(config: AppConfig) -> dict[str, str]:
    """Environment that puts Serve in its fast mode (see `http.fast_path`); empty when it is off.

    Serve reads these when its processes import it, so they must be set before Ray starts:
    in the driver that starts a local Ray, or in every KubeRay pod.
    """
    if not config.http.fast_path:
        return {}
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # direct ingress, user code on the main loop, gRPC between deployments
        "RAY_SERVE_ENABLE_HA_PROXY": "1",  # HAProxy on the HTTP port load-balances over replicas' own ports
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",  # default 30 s makes every stop slow
        "RAY_worker_niceness": "0",  # Ray starts workers (vLLM's engine included) at nice 15 otherwise
    }


def haproxy_ports_env(*, stats_port: int, metrics_port: int) -> dict[str, str]:
    """HAProxy's stats and Prometheus ports for one Serve instance.

    Serve's HAProxy binds them on every interface at fixed defaults (8404, 9101). In a pod that
    is fine; on a laptop or a shared machine a second Serve, or anything else on those ports,
    would collide (HAProxy's SO_REUSEPORT even lets two instances answer on one port at random).
    Its config, socket and state files are already per Ray node (under the node id), so only the
    ports need to differ.
    """
    return {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port)}


def free_local_port() -> int:
    """A TCP port free on this machine now, for a service of a Ray started here (HAProxy's, the dashboard's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_fast_path_env(config: AppConfig) -> dict[str, str]:
    """`fast_path_env` for a Ray started on this machine: plus free ports for HAProxy's stats and metrics."""
    env = fast_path_env(config)
    if env:
        env.update(haproxy_ports_env(stats_port=free_local_port(), metrics_port=free_local_port()))
    return env
