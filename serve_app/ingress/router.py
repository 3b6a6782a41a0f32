"""Router: the OpenAI ingress for apps with several models; routes each request by `model`.

    client ──HTTP──► Serve proxy ──► Router (parse JSON, pick model) ──handle stream──►
    ModelServer.http ──► vLLM's OpenAI app

It only reads enough of the body to find `model`; validation, chat templates and error bodies
of known models are vLLM's. Errors it raises itself use the same OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_app.ingress.http import autoscaler_history, openai_error

__all__ = ["Router"]

log = logging.getLogger("ray.serve")

_HOP_HEADERS = {"content-length", "transfer-encoding", "connection"}


def _build_app(router: "Router") -> Starlette:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(router.handles)})

    async def models(request: Request) -> Response:
        if (denied := router.authorize(request)) is not None:
            return denied
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
        if (denied := router.authorize(request)) is not None:
            return denied
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
        if name not in router.handles:
            return openai_error(
                404, f"The model `{name}` does not exist. Valid models: {', '.join(sorted(router.handles))}.",
                err_type="NotFoundError", param="model",
            )
        return await router.stream(name, request, body)

    async def autoscaler(request: Request) -> Response:
        if (denied := router.authorize(request)) is not None:
            return denied
        return await autoscaler_history(request)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/-/autoscaler/{model}", autoscaler, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", proxy, methods=["POST"]),
            Route("/v1/completions", proxy, methods=["POST"]),
        ]
    )


@serve.ingress()
class Router:
    """Ingress deployment holding one handle per model deployment."""

    def __init__(self, handles: dict[str, DeploymentHandle], api_keys: tuple[str, ...] = ()):
        self.handles = handles
        self._api_keys = tuple(k.encode() for k in api_keys)
        self._app = _build_app(self)

    def __serve_build_asgi_app__(self):
        return self._app

    def authorize(self, request: Request) -> Response | None:
        """Return a 401 response unless auth is off or a configured bearer token is presented."""
        if not self._api_keys:
            return None
        got = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
        if any(hmac.compare_digest(got, k) for k in self._api_keys):
            return None
        return openai_error(401, "missing or invalid API key (Authorization: Bearer <key>)", err_type="AuthenticationError")

    def _call(self, name: str, method: str, path: str, body: bytes, request: Request):
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _HOP_HEADERS]
        return self.handles[name].options(stream=True).http.remote(method, path, request.url.query.encode(), headers, body)

    async def collect(self, name: str, method: str, path: str, body: bytes, request: Request):
        """Run a request on model `name` and return (status, headers, whole body)."""
        status, headers, chunks = 500, [], []
        async for item in self._call(name, method, path, body, request):
            if isinstance(item, tuple):
                _, status, headers = item
            else:
                chunks.append(item)
        return status, headers, b"".join(chunks)

    async def stream(self, name: str, request: Request, body: bytes) -> Response:
        """Forward to model `name`, passing its status, headers and chunks through as they come."""
        gen = self._call(name, request.method, request.url.path, body, request)
        try:
            _, status, headers = await gen.__anext__()
        except Exception as e:  # replica died, backpressure, engine dead: the client gets JSON, not a trace
            log.warning("fleetserve: %s unavailable: %r", name, e)
            return openai_error(503, f"model `{name}` is temporarily unavailable ({type(e).__name__}); retry",
                                err_type="ServiceUnavailableError", param="model")
        headers = {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}

        async def body_iter():
            async for chunk in gen:
                yield chunk

        return StreamingResponse(body_iter(), status_code=status, headers=headers)
