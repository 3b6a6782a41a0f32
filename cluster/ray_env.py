"""Environment for the Ray processes that run the app (pure: used by the local launcher and the KubeRay renderer)."""

from __future__ import annotations

from serve_app.config import AppConfig

__all__ = ["fast_path_env"]


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
