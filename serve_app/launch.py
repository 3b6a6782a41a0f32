"""`fleetserve serve`: deploy the config on Ray (local or $RAY_ADDRESS), print where to send requests.

The same app `serve run serve_app.config:app` builds; this adds the config's HTTP host/port
(`serve run` of an import path always uses Serve's defaults) and a clean stop on SIGTERM.
"""

from __future__ import annotations

import signal
import threading

from serve_app.schema import AppConfig

__all__ = ["deploy", "serve_forever"]


def deploy(config: AppConfig, *, blocking_timeout_s: float | None = None, session=None) -> str:
    """Start Serve with the config's HTTP options, deploy the app and return its base URL.

    Waits until the app runs; raises DeployFailed naming the model and the cause when a replica
    cannot start (see serve_app.startup), PlacementError when a replica cannot be placed.
    `session`: the RaySession that connected this process (else ensure_ray is called here).
    """
    from cluster import ray_cluster
    from serve_app.app import build_application, deployment_name
    from serve_app.startup import LOG_HINT, DeployFailed, failure_cause, wait_until_running

    session = session or ray_cluster.ensure_ray(config)
    app = build_application(config, cluster_can_grow=not session.started)
    try:
        ray_cluster.start_serve(host=config.http.host, port=config.http.port,
                                request_timeout_s=config.http.request_timeout_s)
    except Exception as e:  # Ray raises its task errors (e.g. HAProxy that cannot bind) with a long traceback
        found = failure_cause(str(e))
        raise DeployFailed(f"Serve could not start its HTTP front on {config.http.host}:{config.http.port}: "
                           f"{found.cause if found else type(e).__name__}\nFull logs: {LOG_HINT}") from e
    # Not a waiting deploy: it would wait on a replica that restarts forever and end in Ray's
    # traceback. We poll Serve's status and stop at the first cause we can name.
    ray_cluster.deploy(app, name=config.name, wait=False)
    wait_until_running(config.name, models={deployment_name(m): m.name for m in config.models},
                       timeout_s=blocking_timeout_s)
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    return f"http://{host}:{config.http.port}"


def serve_forever(config: AppConfig) -> None:
    """Deploy, print how to call the app, and block until SIGINT/SIGTERM; then shut down what we started."""
    from cluster.ray_cluster import ensure_ray, metrics_url

    session = ensure_ray(config)
    try:
        url = deploy(config, session=session)
    except BaseException:
        # Failed or interrupted start: stop what we started so the caller's exit is clean.
        session.close()
        raise
    stop = threading.Event()
    # After deploy: ray.init installs its own SIGTERM handler (exit 15) that would skip our cleanup.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    first = config.models[0].name
    print(f"\nfleetserve is serving {', '.join(m.name for m in config.models)} at {url}/v1 (OpenAI API)", flush=True)
    print(f"  curl {url}/v1/models", flush=True)
    print(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{first}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}], \"max_tokens\": 16}}'",
          flush=True)
    metrics = metrics_url(session)
    if metrics:  # Prometheus text of every Serve, vLLM and fleetserve metric of this node
        print(f"  metrics: {metrics}", flush=True)
    print("Ctrl-C to stop.", flush=True)
    stop.wait()
    session.close(stop_serve=True)  # the app this command deployed goes, on a joined cluster too
