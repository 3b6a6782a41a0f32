"""Serve a fleetserve config as `fleetserve serve -c deploy.yaml` does: `python -m bench.fleetserve_driver --config deploy.yaml`.

The same code path (serve_app.launch.deploy, whose ensure_ray starts a fresh local Ray with
the config's fast-path environment), plus what a benchmark needs:
- it prints `READY <url>` where `<url>` is where Serve's controller routes the app's HTTP
  traffic: HAProxy or Serve's proxy on the config's port, or the replica's own port under
  direct ingress without HAProxy;
- `--experiment` changes one thing, to measure what it costs: every other argument of
  ensure_ray's `ray.init` stays as shipped.
SIGTERM/SIGINT: `serve.shutdown()` and `ray.shutdown()`.
"""

from __future__ import annotations

import argparse
import functools
import signal
import threading
import time

from bench._experiments import EXPERIMENTS, apply_in_driver, ray_init_kwargs


def _ingress_url(app_name: str, fallback: str, *, timeout_s: float = 30.0) -> str:
    """Return the HTTP address of `app_name`'s ingress as Serve's controller routes it."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        for g in groups:
            if g.protocol == RequestProtocol.HTTP and g.targets:
                t = g.targets[0]
                host = "127.0.0.1" if t.ip in ("0.0.0.0", "::") else t.ip
                return f"http://{host}:{t.port}"
        time.sleep(0.5)
    return fallback


def main() -> None:
    """Deploy the config and block until a stop signal."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="fleetserve deploy YAML.")
    ap.add_argument("--experiment", action="append", default=[], choices=EXPERIMENTS,
                    help="Turn one piece of the request path off to measure it (bench._experiments); repeatable.")
    args = ap.parse_args()

    import ray
    from ray import serve

    from serve_app.schema import load_config
    from serve_app.launch import deploy

    config = load_config(args.config)
    apply_in_driver(args.experiment)
    extra = ray_init_kwargs(args.experiment)
    if extra:  # add to the ray.init that ensure_ray makes, leaving its own arguments as shipped
        ray.init = functools.partial(ray.init, **extra)
    url = deploy(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY {_ingress_url(config.name, url)}", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
