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
    from ray import serve

    from serve_app.app import build_application, deployment_name, ensure_ray

    ensure_ray(config)
    app = build_application(config)
    serve.start(http_options={"host": config.http.host, "port": config.http.port,
                              "request_timeout_s": config.http.request_timeout_s},
                proxy_location="HeadOnly")
    from serve_app.startup import wait_until_running

    # Not serve.run: it would wait on a replica that restarts forever and end in Ray's
    # traceback. We poll Serve's status and stop at the first cause we can name.
    serve._run(app, _blocking=False, name=config.name, route_prefix="/")
    wait_until_running(config.name, models={deployment_name(m): m.name for m in config.models},
                       timeout_s=blocking_timeout_s)
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    return f"http://{host}:{config.http.port}"


def serve_forever(config: AppConfig) -> None:
    """Deploy, print how to call the app, and block until SIGINT/SIGTERM; then shut down what we started."""
    import ray
    from ray import serve

    try:
        url = deploy(config)
    except BaseException:
        # Failed or interrupted start: stop what we started so the caller's exit is clean.
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
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
    print("Ctrl-C to stop.", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()
