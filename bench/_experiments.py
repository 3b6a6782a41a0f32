"""Bench-only switches that remove one piece of fleetserve's request path, to measure what it costs.

Nothing here is a fix: each switch turns a piece off (some of them needed features) so the
benchmark can attribute time to it. Used by bench.fleetserve_driver --experiment NAME.

(no-prompt-tracking is gone with what it measured: the vLLM engine no longer wraps
AsyncLLM.generate; it reads vLLM's own get_num_queued_tokens.)
- no-access-log: Serve's per-request access log off on the model deployment
  (logging_config.enable_access_log = False), patched into the app builder in the driver.
"""

from __future__ import annotations

__all__ = ["EXPERIMENTS", "apply_in_driver", "ray_init_kwargs"]

EXPERIMENTS = ("no-access-log",)


def ray_init_kwargs(experiments: list[str]) -> dict:
    """Extra ray.init kwargs the experiments need (none at present)."""
    return {}


def apply_in_driver(experiments: list[str]) -> None:
    """Patch the driver-side app builder for the experiments that change deployment options."""
    if "no-access-log" in experiments:
        import serve_app.app as app

        original = app.deployment_options

        def without_access_log(model, layout):
            return original(model, layout) | {"logging_config": {"enable_access_log": False}}

        app.deployment_options = without_access_log
