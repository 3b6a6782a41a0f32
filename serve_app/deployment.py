"""ModelServer: one Serve replica = one engine spanning the replica's placement group.

    Serve proxy ──HTTP──► ModelServer (direct: vLLM's OpenAI app is this replica's ASGI app)
    Router ──handle.http()──► ModelServer ──forward_asgi──► vLLM's OpenAI app ──► AsyncLLM

Serve places the replica actor in bundle 0 of the placement group; vLLM's workers are
processes of the replica (mp executor) or Ray actors scheduled into the same group (ray
executor). Engine stats reach the autoscaler through `record_autoscaling_stats`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ray import serve

from cluster.planner.layout import Layout
from serve_app.engines.registry import EngineSpec
from serve_app.schema import ModelConfig
from serve_app.ingress.asgi_forward import forward_asgi
from serve_app.ingress.gate import GateSpec

__all__ = ["ModelServer", "DirectModelServer", "ReplicaSpec"]

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


async def _start_engine(spec: ReplicaSpec):
    if spec.model_dir and spec.model_dir == spec.model.source:  # a hub id: the engine would download it
        from serve_app.errors import EngineError
        from serve_app.sources import source_status

        # A hub id vLLM cannot fetch costs ~30 s of retries per start, then Serve restarts us:
        # one quick look (cache, then one hub request) fails this start with the reason instead.
        status = source_status(spec.model.source, network=True)
        if not status.ok:
            raise EngineError(f"models[{spec.model_index}].source: {status.note}")
    return await spec.engine.start(EngineSpec(model=spec.model, layout=spec.layout, model_dir=spec.model_dir,
                                              where=f"models[{spec.model_index}]"))


class ModelServer:
    """A Serve replica wrapping one engine and its OpenAI app."""

    async def __init__(self, spec: ReplicaSpec):
        from serve_app.ingress.guard import EngineGuard

        self._spec = spec
        self._engine = await _start_engine(spec)
        engine = self._engine
        self._app = EngineGuard(engine.asgi_app, model=spec.model.name, alive=engine.alive,
                                waiting_prompt_tokens=lambda: engine.stats().waiting_tokens,
                                limits=spec.model.limits,
                                # Serve's next health check flips the replica's /-/healthz; HAProxy then
                                # needs one check at 1 s and a second at its 250 ms fastinter to mark it down.
                                dead_hold_s=spec.model.health_check_period_s + 1.5)
        par = spec.layout.parallelism
        log.info("fleetserve: %s ready (engine=%s tp=%d pp=%d ep=%d executor=%s)", spec.model.name,
                 spec.engine.__name__, par.tensor, par.pipeline, par.expert, spec.layout.executor)

    async def http(
        self, method: str, path: str, query_string: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> AsyncIterator[Any]:
        """Serve one HTTP request forwarded by the router; yields ("start", status, headers) then chunks."""
        async for item in forward_asgi(
            self._app, method=method, path=path, query_string=query_string, headers=headers, body=body
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
        # client ──► Gate (routes, key, limits) ──► EngineGuard (engine state) ──► vLLM's OpenAI app
        return Gate(self._app, self._spec.gate).restrict_to(p for p in served if p)
