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

from cluster.planner.layout import Layout
from serve_app.engines.registry import EngineSpec
from serve_app.schema import ModelConfig, TelemetryConfig
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
    layout: Layout  # resolved once (cluster.planner.plan_layout); model.parallelism may still say "auto"
    engine: Any  # the engine class (serve_app.engines.registry); pickled by reference into the replica
    gate: GateSpec | None = None  # direct ingress only: the replica is the app's HTTP front
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def engine_metrics_layout(self, layout: str) -> str | None:
        """The `layout` label vLLM's own metrics go to Ray with, or None (not exported) with telemetry.engine_metrics off."""
        return layout if self.telemetry.engine_metrics else None


def wrap_engine_app(engine: Any, spec: ReplicaSpec, *, replica: str, layout: str,
                    on_refused: Callable[[int, str], None] | None = None) -> tuple[Any, Callable[[Any], Any]]:
    """Return (guarded engine app, front) of one replica; front(app) adds the request span and log line.

        front(Gate(guarded))  direct ingress: the replica is the HTTP front
        front(guarded)        behind the router (ModelServer.http)
    """
    from serve_app.ingress.guard import EngineGuard

    guarded = EngineGuard(engine.asgi_app, model=spec.model.name, alive=engine.alive,
                          waiting_prompt_tokens=lambda: engine.stats().waiting_tokens,
                          limits=spec.model.limits, on_refused=on_refused,
                          # Serve's next health check flips the replica's /-/healthz; HAProxy then
                          # needs one check at 1 s and a second at its 250 ms fastinter to mark it down.
                          dead_hold_s=spec.model.health_check_period_s + 1.5)
    path = spec.telemetry.request_log
    request_log = RequestLog(path, static={"replica": replica, "layout": layout}) if path else None
    attrs = {"fleetserve.replica": replica, "fleetserve.layout": layout, "fleetserve.deployment": spec.model.name}

    def front(app: Any) -> RequestTelemetry:
        return RequestTelemetry(app, role="replica", model=spec.model.name, attributes=attrs, request_log=request_log)

    return guarded, front


async def start_engine(spec: ReplicaSpec, *, traces_endpoint: str | None = None, metrics_layout: str | None = None):
    """Start the engine `spec` names. `traces_endpoint`: vLLM's OTLP traces go there (None: off);
    `metrics_layout`: vLLM's metrics go to Ray's metrics agent with this `layout` label (None: off)."""
    if spec.model_dir and spec.model_dir == spec.model.source:  # a hub id: the engine would download it
        from serve_app.errors import EngineError
        from serve_app.sources import source_status

        # A hub id vLLM cannot fetch costs ~30 s of retries per start, then Serve restarts us:
        # one quick look (cache, then one hub request) fails this start with the reason instead.
        status = source_status(spec.model.source, network=True)
        if not status.ok:
            raise EngineError(f"models[{spec.model_index}].source: {status.note}")
    return await spec.engine.start(EngineSpec(model=spec.model, layout=spec.layout, model_dir=spec.model_dir,
                                              where=f"models[{spec.model_index}]", traces_endpoint=traces_endpoint,
                                              metrics_layout=metrics_layout))


class ModelServer:
    """A Serve replica wrapping one engine and its OpenAI app."""

    async def __init__(self, spec: ReplicaSpec):
        from serve_app.telemetry import install
        from serve_app.telemetry.metrics import Refusals, layout_label, replica_id, report_engine_signals

        self._spec = spec
        self._replica = replica_id()
        layout = layout_label(spec.layout.parallelism, spec.layout.executor)
        # The tracer provider first: vLLM's engine spans then go through it (see build_vllm_args).
        tracing = TracingSettings.resolve(spec.telemetry)
        install(tracing, resource={"fleetserve.model": spec.model.name, "fleetserve.replica": self._replica,
                                   "fleetserve.layout": layout})
        self._engine = await start_engine(spec, traces_endpoint=tracing.endpoint,
                                          metrics_layout=spec.engine_metrics_layout(layout))
        self._refused = Refusals(model=spec.model.name, replica=self._replica)
        self._app, self._front = wrap_engine_app(self._engine, spec, replica=self._replica, layout=layout,
                                                 on_refused=self._refused)
        self._routed = self._front(self._app)
        # Keep a reference: the loop holds tasks weakly.
        self._signals = asyncio.get_running_loop().create_task(report_engine_signals(
            self._engine.stats, model=spec.model.name, replica=self._replica, layout=layout,
            front_ends=self.front_ends))
        par = spec.layout.parallelism
        log.info("fleetserve: %s ready (engine=%s tp=%d pp=%d ep=%d executor=%s)", spec.model.name,
                 spec.engine.__name__, par.tensor, par.pipeline, par.expert, spec.layout.executor)

    async def http(
        self, method: str, path: str, query_string: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> AsyncIterator[Any]:
        """Serve one HTTP request forwarded by the router; yields ("start", status, headers) then chunks."""
        async for item in forward_asgi(
            self._routed, method=method, path=path, query_string=query_string, headers=headers, body=body
        ):
            yield item

    def front_ends(self) -> dict[str, Any] | None:
        """The replica's front-end processes (models[].front_ends): requests each served, which are alive.
        None for an engine with no such notion (the simulator)."""
        status = getattr(self._engine, "front_ends", None)
        return status() if status is not None else None

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
