"""Serve a fleetserve config on a Ray of our own: `python -m bench.fleetserve_driver --config deploy.yaml`.

The same deploy as `fleetserve serve -c deploy.yaml` (serve_app.launch.deploy), with two
differences a benchmark on a shared machine needs:
- `ray.init(address="local", num_cpus=4)` before deploy: a fresh Ray that is this process's
  own (`fleetserve serve` calls `ray.init()` without an address, which joins a Ray already
  running on the machine, if any);
- it prints `READY <url>` where `<url>` is where the app answers: Serve's proxy, or with
  RAY_SERVE_ENABLE_DIRECT_INGRESS=1 / RAY_SERVE_THROUGHPUT_OPTIMIZED=1 the ingress replica's
  own port (30000-31000 by default), read from Serve's controller.
SIGTERM/SIGINT: `serve.shutdown()` and `ray.shutdown()`.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--num-cpus", type=int, default=4, help="Logical CPUs of the local Ray.")
    ap.add_argument("--no-dashboard", action="store_true",
                    help="ray.init(include_dashboard=False): measures what Ray's dashboard costs.")
    ap.add_argument("--no-proxy", action="store_true",
                    help="Start Serve without its HTTP proxy (direct ingress only): measures what the idle proxy costs.")
    ap.add_argument("--experiment", action="append", default=[], choices=EXPERIMENTS,
                    help="Turn one piece of the request path off to measure it (bench._experiments); repeatable.")
    args = ap.parse_args()

    import ray
    from ray import serve

    from serve_app.config import load_config
    from serve_app.launch import deploy

    config = load_config(args.config)
    apply_in_driver(args.experiment)
    ray.init(address="local", num_cpus=args.num_cpus, namespace="serve",
             **({"include_dashboard": False} if args.no_dashboard else {}), **ray_init_kwargs(args.experiment))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    if args.no_proxy:  # deploy()'s own serve.start then finds Serve running and keeps these options
        serve.start(http_options={"host": config.http.host, "port": config.http.port}, proxy_location="Disabled")
    url = deploy(config)
    print(f"READY {_ingress_url(config.name, url)}", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
