"""Serve a fleetserve config as `fleetserve serve -c deploy.yaml` does: `python -m bench.fleetserve_driver --config deploy.yaml`.

The same code path (serve_app.launch.deploy, whose ensure_ray starts a fresh local Ray with
the config's fast-path environment), plus what a benchmark needs:
- it prints `READY <url>` where `<url>` is where Serve's controller routes the app's HTTP
  traffic: HAProxy or Serve's proxy on the config's port, or the replica's own port under
  direct ingress without HAProxy;
- `--experiment` changes one thing, to measure what it costs: every other argument of
  ensure_ray's `ray.init` stays as shipped.
SIGTERM/SIGINT: the session's close (Serve and Ray stopped).
"""

from __future__ import annotations

import argparse
import signal
import threading

from bench._experiments import EXPERIMENTS, apply_in_driver, ray_init_kwargs


def _ingress_url(config, fallback: str, *, timeout_s: float = 30.0) -> str:
    """Return where the app answers HTTP: the config's port (HAProxy or Serve's proxy), else a replica's own port.

    Probed over public HTTP (no controller internals): under direct ingress without HAProxy the
    replica listens in this instance's direct-ingress port block (cluster.ray_env).
    """
    import os

    from cluster.ray_cluster import probe_url

    low = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT")
    high = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT")
    candidates = [fallback] + ([f"http://127.0.0.1:{p}" for p in range(int(low), int(high))] if low and high else [])
    return probe_url(candidates, timeout_s=timeout_s) or fallback


def main() -> None:
    """Deploy the config and block until a stop signal."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="fleetserve deploy YAML.")
    ap.add_argument("--experiment", action="append", default=[], choices=EXPERIMENTS,
                    help="Turn one piece of the request path off to measure it (bench._experiments); repeatable.")
    args = ap.parse_args()

    from cluster.ray_cluster import ensure_ray
    from serve_app.launch import deploy
    from serve_app.schema import load_config

    config = load_config(args.config)
    apply_in_driver(args.experiment)
    # ensure_ray's own ray.init arguments stay as shipped; an experiment only adds to them.
    session = ensure_ray(config, init_kwargs=ray_init_kwargs(args.experiment))
    url = deploy(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY {_ingress_url(config, url)}", flush=True)
    stop.wait()
    session.close(stop_serve=True)


if __name__ == "__main__":
    main()
