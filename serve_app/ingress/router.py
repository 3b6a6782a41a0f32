"""Router: the OpenAI ingress for apps with several models; routes each request by `model`.

    client ──HTTP──► Serve proxy ──► Router (parse JSON, pick model) ──handle stream──►
    ModelServer.http ──► vLLM's OpenAI app

It only reads enough of the body to find `model`; validation, chat templates and error bodies
of known models are vLLM's. Errors it raises itself use the same OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging

from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_app.ingress.gate import Gate, GateSpec, retry_after
from serve_app.ingress.guard import RETRY_HEADER
from serve_app.ingress.http import autoscaler_history, openai_error
from serve_app.schema import TelemetryConfig
from serve_app.telemetry import RequestTelemetry, TracingSettings, current_request, install

__all__ = ["Router"]

log = logging.getLogger("ray.serve")

_HOP_HEADERS = {"content-length", "transfer-encoding", "connection"}
# Attempts per request when a replica dies or answers "retry elsewhere" before sending a byte.
_ATTEMPTS = 4
_RETRY_PAUSE_S = 0.25  # lets Serve's router see the dead replica before the next pick


# POST routes the router forwards to the model named in the body.
_FORWARDED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize")


def _build_app(router: "Router") -> Starlette:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(router.handles)})

    async def models(request: Request) -> Response:
        names = sorted(router.handles)
        results = await asyncio.gather(*(router.collect(n, "GET", "/v1/models", b"", request) for n in names))
        data = []
        for name, (status, _, body) in zip(names, results):
            if status == 200:
                data.extend(json.loads(body)["data"])
            else:
                log.warning("fleetserve: /v1/models of %s answered %s", name, status)
        return JSONResponse({"object": "list", "data": data})

    async def proxy(request: Request) -> Response:
        body = await request.body()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return openai_error(400, f"request body is not valid JSON: {e}", err_type="BadRequestError")
        if not isinstance(payload, dict):
            return openai_error(400, "request body must be a JSON object", err_type="BadRequestError")
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            return openai_error(400, "`model` is required and must be a string", err_type="BadRequestError", param="model")
        rec = current_request()
        if rec is not None:
            rec.model = name  # the router span's gen_ai.request.model
        if name not in router.handles:
            return openai_error(
                404, f"The model `{name}` does not exist. Valid models: {', '.join(sorted(router.handles))}.",
                err_type="NotFoundError", param="model",
            )
        return await router.stream(name, request, body)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/-/autoscaler/{model}", autoscaler_history, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
        ] + [Route(p, proxy, methods=["POST"]) for p in _FORWARDED]
    )


@serve.ingress()
class Router:
    """Ingress deployment holding one handle per model deployment, behind the gate."""

    def __init__(self, handles: dict[str, DeploymentHandle], gate: GateSpec, telemetry: TelemetryConfig | None = None):
        from serve_app.telemetry.metrics import Refusals, replica_id

        self.handles = handles
        replica = replica_id()
        install(TracingSettings.resolve(telemetry or TelemetryConfig()),
                resource={"fleetserve.role": "router", "fleetserve.replica": replica})
        self._refused = Refusals(model=None, replica=replica)
        # client ──► RequestTelemetry (router span; its traceparent goes on to the replica) ──► Gate ──► routes
        self._app = RequestTelemetry(Gate(_build_app(self), gate, on_refused=self._refused), role="router",
                                     attributes={"fleetserve.replica": replica})

    def __serve_build_asgi_app__(self):
        return self._app

    def _call(self, name: str, method: str, path: str, body: bytes, request: Request):
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _HOP_HEADERS]
        return self.handles[name].options(stream=True).http.remote(method, path, request.url.query.encode(), headers, body)

    async def _start(self, name: str, method: str, path: str, body: bytes, request: Request):
        """Open the response of model `name`: (generator, status, headers), retrying elsewhere while nothing was sent.

        A replica that died (actor error) or answered 503 with the retry header did no work the
        client saw, so the request goes to another pick; Serve's handle stops picking a dead
        replica once the controller notices. Raises the last error when every attempt failed.
        """
        last: Exception | tuple | None = None
        for attempt in range(_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_RETRY_PAUSE_S * attempt)
            gen = self._call(name, method, path, body, request)
            try:
                _, status, headers = await gen.__anext__()
            except BackPressureError:
                raise
            except Exception as e:  # replica or actor died before answering: retry on another
                log.warning("fleetserve: %s attempt %d failed before any byte: %r", name, attempt + 1, e)
                last = e
                continue
            if status == 503 and any(k.lower() == RETRY_HEADER for k, _ in headers) and attempt + 1 < _ATTEMPTS:
                gen.cancel()
                last = (status, headers)
                continue
            return gen, status, headers
        if isinstance(last, Exception):
            raise last
        raise _Unavailable()

    async def collect(self, name: str, method: str, path: str, body: bytes, request: Request):
        """Run a request on model `name` and return (status, headers, whole body)."""
        try:
            gen, status, headers = await self._start(name, method, path, body, request)
        except Exception:
            return 503, [], b""
        chunks = [item async for item in gen]
        return status, headers, b"".join(chunks)

    async def stream(self, name: str, request: Request, body: bytes) -> Response:
        """Forward to model `name`, passing its status, headers and chunks through as they come."""
        try:
            gen, status, headers = await self._start(name, request.method, request.url.path, body, request)
        except BackPressureError as e:
            self._refused(503, "backpressure", model=name)
            return openai_error(503, f"model `{name}` is at capacity; retry later", err_type="ServiceUnavailableError",
                                param="model", headers=dict([retry_after(getattr(e, "retry_after_s", None) or 1)]))
        except Exception as e:  # every attempt failed: the client gets JSON, not a trace
            log.warning("fleetserve: %s unavailable: %r", name, e)
            self._refused(503, "unavailable", model=name)
            return openai_error(503, f"model `{name}` is temporarily unavailable; retry", err_type="ServiceUnavailableError",
                                param="model", headers=dict([retry_after(1)]))
        headers = {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}
        sse = headers.get("content-type", "").startswith("text/event-stream")

        async def body_iter():
            try:
                async for chunk in gen:
                    yield chunk
            except Exception as e:  # the replica died mid-response: end the stream cleanly, never a silent cut
                log.warning("fleetserve: %s failed mid-response: %r", name, e)
                if sse:
                    err = {"error": {"message": f"model `{name}` stopped mid-stream; retry the request",
                                     "type": "ServiceUnavailableError", "param": None, "code": 503}}
                    yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()

        return StreamingResponse(body_iter(), status_code=status, headers=headers)


class _Unavailable(Exception):
    """Every attempt was answered "retry elsewhere"."""
