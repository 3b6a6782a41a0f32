"""Environment for the Ray processes that run the app (pure: used by the local launcher and the KubeRay renderer)."""

from __future__ import annotations

import fcntl
import os
import random
import socket

from serve_app.schema import AppConfig

__all__ = ["CPU_ENGINE_ENV", "fast_path_env", "free_local_port", "haproxy_ports_env", "local_fast_path_env", "claim_port_block"]

# vLLM on the CPU fails at start without these (see README "CPU stack"); a model's `env` overrides
# them. The app sets them on CPU replicas; bench/ starts its raw-vLLM peers with the same.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}

# Where a Ray started on this machine puts its replicas' own HTTP/gRPC ports. Serve's default
# range (30000-31000) and fallback-proxy port (8500) are the same for every Serve on a machine,
# so a second app's HAProxy could reach the first app's replicas (seen: for ~60 s a new app
# answered with the other app's models, without a key). Each local instance claims its own block.
_BLOCKS = range(20000, 30000, 100)  # above Ray's worker ports (10002-19999), below Serve's default range
_LOCK_DIR = "/tmp/fleetserve-port-blocks"
_held_blocks: list = []  # open lock files: a block stays claimed while the process that started Ray lives


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
        # Retry on another replica what a replica did not do: a refused connection, a connection
        # closed before any byte (replica killed), and a 503 (engine dead or at capacity; see
        # serve_app/ingress/guard.py). Inference has no side effects, so a replay is safe.
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response 503",
        "RAY_SERVE_HAPROXY_RETRIES": "3",
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": "1s",  # a replica whose engine died leaves the pool within ~2 s
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


def claim_port_block() -> int:
    """Claim a block of 100 ports no other fleetserve on this machine holds; return its first port.

    The claim is an exclusive flock held by this process until it exits, so two apps started at
    once never get the same block, and a block frees itself when its app is gone.
    """
    os.makedirs(_LOCK_DIR, exist_ok=True)
    blocks = list(_BLOCKS)
    random.shuffle(blocks)
    for base in blocks:
        f = open(os.path.join(_LOCK_DIR, f"{base}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        if all(_is_free(p) for p in range(base, base + 100)):
            _held_blocks.append(f)
            return base
        f.close()  # something else uses these ports: try another block
    raise RuntimeError(f"no free block of 100 ports in {_BLOCKS.start}-{_BLOCKS.stop} for Serve's replica ports")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def local_fast_path_env(config: AppConfig) -> dict[str, str]:
    """`fast_path_env` for a Ray started on this machine: plus ports of its own.

    HAProxy's stats and metrics ports, Serve's fallback proxy and the replicas' direct-ingress
    ports: none may be shared with another Serve on the machine (see _BLOCKS).
    """
    env = fast_path_env(config)
    if env:
        base = claim_port_block()
        env.update(haproxy_ports_env(stats_port=free_local_port(), metrics_port=free_local_port()))
        env.update({
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 50),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + 50),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 100),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_local_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_local_port()),
        })
    return env
