"""Bench-only switches that remove one piece of fleetserve's request path, to measure what it costs.

Nothing here is a fix: each switch turns a piece off (some of them needed features) so the
benchmark can attribute time to it. Used by bench.fleetserve_driver --experiment NAME.

- no-prompt-tracking: skip serve_app's wrapper around AsyncLLM.generate that counts waiting
  prompt tokens (an extra async-generator layer and a lock per output). Runs in every Ray
  worker through runtime_env's worker_process_setup_hook, before the replica imports the engine.
- no-access-log: Serve's per-request access log off on the model deployment
  (logging_config.enable_access_log = False), patched into the app builder in the driver.
"""

from __future__ import annotations

__all__ = ["EXPERIMENTS", "worker_setup_no_prompt_tracking", "apply_in_driver", "ray_init_kwargs"]

EXPERIMENTS = ("no-prompt-tracking", "no-access-log")


def worker_setup_no_prompt_tracking() -> None:
    """Ray worker setup hook: make serve_app's prompt-token tracking a no-op in this process."""
    import serve_app.engines.vllm_engine as vllm_engine

    vllm_engine._track_prompt_tokens = lambda engine, holder: None


def ray_init_kwargs(experiments: list[str]) -> dict:
    """Extra ray.init kwargs the experiments need."""
    if "no-prompt-tracking" in experiments:
        return {"runtime_env": {"worker_process_setup_hook": "bench._experiments.worker_setup_no_prompt_tracking"}}
    return {}


def apply_in_driver(experiments: list[str]) -> None:
    """Patch the driver-side app builder for the experiments that change deployment options."""
    if "no-access-log" in experiments:
        import serve_app.app as app

        original = app.deployment_options

        def without_access_log(model, layout):
            return original(model, layout) | {"logging_config": {"enable_access_log": False}}

        app.deployment_options = without_access_log
