"""Serve the tiny dense model with Ray Serve LLM (`ray.serve.llm.build_openai_app`) on a Ray of our own.

    python -m bench.rayllm_driver --model-dir DIR --name tiny-dense --port 18000 --engine-kwargs '{...}'

Starts a fresh local Ray (`ray.init(address="local", num_cpus=4)`: logical CPUs, Ray Serve LLM's ingress and
its replica each ask for one on this 2-core machine), deploys one LLM config on the CPU with
the given vLLM engine kwargs, prints `READY <url>` and serves until SIGTERM/SIGINT; then
`serve.shutdown()` and `ray.shutdown()`, so the whole Ray instance ends with this process.
Ray Serve LLM is measured as shipped: its default 50 ms response batching
(RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS) and its default ingress + proxy are left alone.
Needs pyarrow, pandas and jsonref (`.venv/bin/pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading


def main() -> None:
    """Parse the arguments, deploy, and block until a stop signal."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="Local Hugging Face model dir.")
    ap.add_argument("--name", required=True, help="Served model id (the `model` of requests).")
    ap.add_argument("--port", type=int, required=True, help="Port of Serve's HTTP proxy on 127.0.0.1.")
    ap.add_argument("--engine-kwargs", default="{}", help="vLLM engine kwargs, JSON.")
    ap.add_argument("--env", default="{}", help="Env vars of the replica and its engine (runtime_env), JSON.")
    ap.add_argument("--num-cpus", type=int, default=4, help="Logical CPUs of the local Ray.")
    args = ap.parse_args()

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    # address="local": a fresh Ray of this process. Without it ray.init joins any Ray already
    # running on the machine (another user's), found through /tmp/ray/ray_current_cluster.
    ray.init(address="local", num_cpus=args.num_cpus)
    stop = threading.Event()
    # After ray.init: it installs its own SIGTERM handler that would skip the shutdown below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    llm_config = LLMConfig(
        model_loading_config={"model_id": args.name, "model_source": args.model_dir},
        accelerator_config={"kind": "cpu"},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        engine_kwargs=json.loads(args.engine_kwargs),
        runtime_env={"env_vars": json.loads(args.env)},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build_openai_app({"llm_configs": [llm_config]}), name="rayllm", route_prefix="/")
    print(f"READY http://127.0.0.1:{args.port}", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
