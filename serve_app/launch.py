"""`fleetserve serve`: deploy the config on Ray (local or $RAY_ADDRESS), print where to send requests.

The same app `serve run serve_app.config:app` builds; this adds the config's HTTP host/port
(`serve run` of an import path always uses Serve's defaults) and a clean stop on SIGTERM.
"""

from __future__ import annotations

import signal
import threading

from serve_app.schema import AppConfig

__all__ = ["deploy", "serve_forever"]


def deploy(config: AppConfig, *, blocking_timeout_s: float | None = None) -> str:
    """Start Serve with the config's HTTP options, deploy the app and return its base URL."""
    from cluster import ray_cluster
    from serve_app.app import build_application

    ray_cluster.ensure_ray(config)
    app = build_application(config)
    ray_cluster.start_serve(host=config.http.host, port=config.http.port, request_timeout_s=config.http.request_timeout_s)
    ray_cluster.deploy(app, name=config.name)
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    return f"http://{host}:{config.http.port}"


def serve_forever(config: AppConfig) -> None:
    """Deploy, print how to call the app, and block until SIGINT/SIGTERM; then shut down what we started."""
    from cluster.ray_cluster import ensure_ray

    session = ensure_ray(config)  # what deploy() then finds connected
    url = deploy(config)
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
    print("Ctrl-C to stop.", flush=True)
    stop.wait()
    session.close(stop_serve=True)  # the app this command deployed goes, on a joined cluster too
