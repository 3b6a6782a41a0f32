"""ModelServer: one Serve replica = one engine spanning the replica's placement group.

    Serve proxy ──HTTP──► ModelServer (direct: vLLM's OpenAI app is this replica's ASGI app)
    Router ──handle.http()──► ModelServer ──forward_asgi──► vLLM's OpenAI app ──► AsyncLLM

Serve places the replica actor in bundle 0 of the placement group; vLLM's workers are
processes of the replica (mp executor) or Ray actors scheduled into the same group (ray
executor). Engine stats reach the autoscaler through `record_autoscaling_stats`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from ray import serve

from serve_app.schema import ModelConfig, Parallelism, TelemetryConfig
from serve_app.ingress.asgi_forward import forward_asgi
from serve_app.ingress.gate import GateSpec
from serve_app.telemetry import RequestLog, RequestTelemetry, TracingSettings

__all__ = ["ModelServer", "DirectModelServer", "ReplicaSpec", "wrap_engine_app", "start_engine"]

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs, resolved by the app builder (no lookups at replica start)."""

    model: ModelConfig
    model_index: int
    model_dir: str
    parallelism: Parallelism
    executor: str  # "mp" or "ray"
    gate: GateSpec | None = None  # direct ingress only: the replica is the app's HTTP front
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)


def wrap_engine_app(engine: Any, spec: ReplicaSpec, *, replica: str, layout: str,
                    on_refused: Callable[[int, str], None] | None = None) -> tuple[Any, Callable[[Any], Any]]:
    """Return (guarded engine app, front) of one replica; front(app) adds the request span and log line.

        front(Gate(guarded))  direct ingress: the replica is the HTTP front
        front(guarded)        behind the router (ModelServer.http)
    """
    from serve_app.ingress.guard import EngineGuard

    guarded = EngineGuard(engine.asgi_app, model=spec.model.name, alive=engine.alive,
                          waiting_prompt_tokens=lambda: engine.stats().waiting_tokens,
                          limits=spec.model.limits, on_refused=on_refused)
    path = spec.telemetry.request_log
    request_log = RequestLog(path, static={"replica": replica, "layout": layout}) if path else None
    attrs = {"fleetserve.replica": replica, "fleetserve.layout": layout, "fleetserve.deployment": spec.model.name}

    def front(app: Any) -> RequestTelemetry:
        return RequestTelemetry(app, role="replica", model=spec.model.name, attributes=attrs, request_log=request_log)

    return guarded, front


async def start_engine(spec: ReplicaSpec, *, traces_endpoint: str | None = None, layout: str | None = None):
    """Start the engine `spec` names (vLLM, or the simulator)."""
    if spec.model.engine == "vllm":
        from serve_app.engines.vllm_engine import VLLMEngine, build_vllm_args

        args = build_vllm_args(
            spec.model,
            model_dir=spec.model_dir,
            parallelism=spec.parallelism,
            executor=spec.executor,
            field_prefix=f"models[{spec.model_index}]",
            traces_endpoint=traces_endpoint,
        )
        return await VLLMEngine.start(args, layout=layout)
    if spec.model.engine == "sim":
        from serve_app.engines.sim_engine import SimEngine

        return await SimEngine.start(spec.model.name, spec.model.sim, spec.model.max_model_len)
    raise ValueError(f"models[{spec.model_index}].engine: unknown engine {spec.model.engine!r}")


class ModelServer:
    """A Serve replica wrapping one engine and its OpenAI app."""

    async def __init__(self, spec: ReplicaSpec):
        from serve_app.telemetry import install
        from serve_app.telemetry.metrics import Refusals, layout_label, replica_id, report_engine_signals

        self._spec = spec
        self._replica = replica_id()
        layout = layout_label(spec.parallelism, spec.executor)
        # The tracer provider first: vLLM's engine spans then go through it (see build_vllm_args).
        tracing = TracingSettings.resolve(spec.telemetry)
        install(tracing, resource={"fleetserve.model": spec.model.name, "fleetserve.replica": self._replica,
                                   "fleetserve.layout": layout})
        self._engine = await start_engine(spec, traces_endpoint=tracing.endpoint, layout=layout)
        self._refused = Refusals(model=spec.model.name, replica=self._replica)
        self._app, self._front = wrap_engine_app(self._engine, spec, replica=self._replica, layout=layout,
                                                 on_refused=self._refused)
        self._routed = self._front(self._app)
        # Keep a reference: the loop holds tasks weakly.
        self._signals = asyncio.get_running_loop().create_task(report_engine_signals(
            self._engine.stats, model=spec.model.name, replica=self._replica, layout=layout))
        log.info("fleetserve: %s ready (tp=%d pp=%d ep=%d executor=%s)", spec.model.name,
                 spec.parallelism.tensor, spec.parallelism.pipeline, spec.parallelism.expert, spec.executor)

    async def http(
        self, method: str, path: str, query_string: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> AsyncIterator[Any]:
        """Serve one HTTP request forwarded by the router; yields ("start", status, headers) then chunks."""
        async for item in forward_asgi(
            self._routed, method=method, path=path, query_string=query_string, headers=headers, body=body
        ):
            yield item

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Report the engine's queue signals to Serve's autoscaler (custom metrics)."""
        return self._engine.stats().as_metrics()

    async def check_health(self) -> None:
        """Serve's health check: raises when the engine core has died, so Serve replaces the replica."""
        await self._engine.check_health()

    def __del__(self):
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()


@serve.ingress()
class DirectModelServer(ModelServer):
    """ModelServer as the app's ingress: Serve's proxy hands HTTP straight to vLLM's app.

    A separate class because Serve allows one ingress deployment per app: behind the router,
    model deployments must be plain.
    """

    def __serve_build_asgi_app__(self):
        from starlette.routing import Route

        from serve_app.ingress.gate import Gate
        from serve_app.ingress.http import autoscaler_history

        inner = self._engine.asgi_app
        # The audit-trail endpoint lives beside vLLM's routes (one ingress per app in direct mode).
        inner.router.routes.insert(0, Route("/-/autoscaler/{model}", autoscaler_history, methods=["GET"]))
        served = [getattr(r, "path", None) for r in inner.router.routes]
        # client ──► RequestTelemetry (span, log line) ──► Gate (routes, key, limits) ──► EngineGuard (engine state) ──► vLLM's OpenAI app
        gate = Gate(self._app, self._spec.gate, on_refused=self._refused).restrict_to(p for p in served if p)
        return self._front(gate)
