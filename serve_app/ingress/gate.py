"""The HTTP gate: one place that decides whether a request reaches the app at all.

    client ──► HAProxy / Serve proxy ──► Gate ──► router app (several models)
                                          │   └─► EngineGuard ──► vLLM's OpenAI app (direct, one model)
                                          ├─ route allow-list   (404 / 405, JSON)
                                          ├─ API key            (401, JSON; every route but the public ones)
                                          ├─ per-key limits     (429 + Retry-After)
                                          ├─ body size          (413)
                                          └─ body that cannot be text (lone surrogates) (400)

Default-deny: without a valid key every path but `http.routes.public` is a 401, whether or not
it exists, so a caller without a key learns nothing about the routes. With a key, only the
allow-listed routes exist. Errors are OpenAI-shaped JSON and never echo the request, a key or a
stack trace. Pure ASGI (no Ray, no vLLM), so it wraps both ingress modes the same way.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from serve_app.schema import AppConfig, KeyLimits
from serve_app.ingress.keys import KeyLimiter, KeySet

__all__ = ["Gate", "GateSpec", "OPENAI_ROUTES", "ROUTER_ROUTES", "call_json_safe", "json_error_messages", "retry_after",
           "send_json_error"]

log = logging.getLogger("ray.serve")

# The OpenAI surface plus fleetserve's own routes; path -> methods. A route absent from the
# app behind the gate is dropped when the gate is built (see Gate.restrict_to).
OPENAI_ROUTES: dict[str, frozenset[str]] = {
    "/health": frozenset({"GET"}),
    "/v1/models": frozenset({"GET"}),
    "/v1/chat/completions": frozenset({"POST"}),
    "/v1/completions": frozenset({"POST"}),
    "/v1/embeddings": frozenset({"POST"}),
    "/tokenize": frozenset({"POST"}),
    "/detokenize": frozenset({"POST"}),
    "/version": frozenset({"GET"}),
    "/metrics": frozenset({"GET"}),
    "/-/autoscaler/{model}": frozenset({"GET"}),
}
# What the router serves itself (it forwards the POST routes by their `model` field).
ROUTER_ROUTES = {p: m for p, m in OPENAI_ROUTES.items() if p not in ("/version", "/metrics")}

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


def json_error_messages(status: int, message: str, *, err_type: str, param: str | None = None,
                        headers: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """The ASGI messages of an OpenAI-style error response."""
    body = json.dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return [{"type": "http.response.start", "status": status, "headers": hdrs},
            {"type": "http.response.body", "body": body, "more_body": False}]


async def send_json_error(send: Send, status: int, message: str, *, err_type: str, param: str | None = None,
                          headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send an OpenAI-style error response."""
    for msg in json_error_messages(status, message, err_type=err_type, param=param, headers=headers):
        await send(msg)


def retry_after(seconds: float) -> tuple[str, str]:
    """A Retry-After header: whole seconds, at least 1 (RFC 9110 has no fractions)."""
    return ("retry-after", str(max(1, math.ceil(seconds))))


@dataclass(frozen=True)
class GateSpec:
    """What the gate enforces, taken from the config by the app builder (plain data: it is pickled to replicas)."""

    routes: dict[str, frozenset[str]]
    public: tuple[str, ...]
    inline_keys: tuple[str, ...] = ()
    keys_env: str | None = None
    keys_file: str | None = None
    key_limits: KeyLimits = KeyLimits()
    max_body_bytes: int = 4 * 1024 * 1024

    @classmethod
    def from_config(cls, config: AppConfig, *, routes: dict[str, frozenset[str]]) -> "GateSpec":
        """The gate of `config`'s ingress, serving `routes` (plus `http.routes.vllm` in direct mode)."""
        routes = dict(routes)
        for path in config.http.routes.vllm:
            routes.setdefault(path, frozenset({"GET", "POST"}))
        return cls(routes=routes, public=config.http.routes.public,
                   inline_keys=tuple(k.get_secret_value() for k in config.api_keys),
                   keys_env=config.api_keys_env, keys_file=config.api_keys_file,
                   key_limits=config.key_limits, max_body_bytes=config.http.max_request_body_bytes)


def _template_regex(path: str) -> re.Pattern:
    parts = re.split(r"(\{[^/]+\})", path)
    return re.compile("^" + "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


class Gate:
    """ASGI middleware: allow-list, API key, per-key limits, body checks; then the wrapped app."""

    def __init__(self, app: Any, spec: GateSpec, *, on_refused: Callable[[int, str], None] | None = None):
        self.app = app
        self.spec = spec
        # on_refused(status, reason): the metrics counter of the process (the gate itself stays Ray-free).
        self._on_refused = on_refused
        self.keys = KeySet(spec.inline_keys, spec.keys_env, spec.keys_file)
        self._limiter = KeyLimiter(spec.key_limits) if spec.key_limits.active else None
        self._exact = {p: m for p, m in spec.routes.items() if "{" not in p}
        self._templates = [(_template_regex(p), m) for p, m in spec.routes.items() if "{" in p]
        self._public = frozenset(spec.public)

    def restrict_to(self, served: Iterable[str]) -> "Gate":
        """Drop allow-listed routes the wrapped app does not serve (so the list is the app's own)."""
        served = set(served)
        self.spec = GateSpec(**{**self.spec.__dict__, "routes": {p: m for p, m in self.spec.routes.items() if p in served}})
        self._exact = {p: m for p, m in self.spec.routes.items() if "{" not in p}
        self._templates = [(_template_regex(p), m) for p, m in self.spec.routes.items() if "{" in p]
        return self

    @property
    def routes(self) -> dict[str, frozenset[str]]:
        """The routes that exist behind this gate, path -> methods."""
        return dict(self.spec.routes)

    def _methods(self, path: str) -> frozenset[str] | None:
        m = self._exact.get(path)
        if m is not None:
            return m
        for rx, methods in self._templates:
            if rx.match(path):
                return methods
        return None

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return  # websockets are not part of the API: closing without accepting refuses them
        await call_json_safe(self._http, scope, receive, send, what="gate")

    async def _http(self, scope: dict, receive: Receive, send: Send) -> None:
        path, method = scope.get("path", ""), scope.get("method", "GET").upper()
        key_id = None
        if path not in self._public and self.keys.enabled:
            key_id = self.keys.match(_bearer(scope))
            if key_id is None:
                return await send_json_error(send, 401, "missing or invalid API key (Authorization: Bearer <key>)",
                                             err_type="AuthenticationError", headers=[("www-authenticate", "Bearer")])
        methods = self._methods(path)
        if methods is None:
            return await send_json_error(send, 404, "no such route", err_type="NotFoundError")
        if method not in methods:
            return await send_json_error(send, 405, f"method {method} is not allowed here; use {', '.join(sorted(methods))}",
                                         err_type="MethodNotAllowedError", headers=[("allow", ", ".join(sorted(methods)))])
        if method in _BODY_METHODS:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            receive = replay_body(body, receive)
        if key_id is not None and self._limiter is not None:
            verdict = self._limiter.acquire(key_id, time.monotonic())
            if not verdict.ok:
                if self._on_refused is not None:
                    self._on_refused(429, "key_limit")
                return await send_json_error(send, 429, verdict.reason, err_type="RateLimitError",
                                             headers=[retry_after(verdict.retry_after_s)])
            try:
                return await self.app(scope, receive, send)
            finally:
                self._limiter.release(key_id)
        await self.app(scope, receive, send)

    async def _read_body(self, scope: dict, receive: Receive, send: Send) -> bytes | None:
        """The whole body (at most max_body_bytes), or None after answering an error."""
        limit = self.spec.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await send_json_error(send, 413, f"request body larger than {limit} bytes (http.max_request_body_bytes)",
                                  err_type="RequestTooLargeError")
            return None
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_json_error(send, 413, f"request body larger than {limit} bytes (http.max_request_body_bytes)",
                                      err_type="RequestTooLargeError")
                return None
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        if _SURROGATE_ESCAPE.search(body) and not _encodable(body):
            await send_json_error(send, 400, "request body holds a lone UTF-16 surrogate (\\ud800-\\udfff) that is not "
                                  "valid Unicode text", err_type="BadRequestError")
            return None
        return body


async def call_json_safe(app: Callable, scope: dict, receive: Receive, send: Send, *, what: str) -> None:
    """Run `app`; an exception before the response started becomes a JSON 500 that says nothing internal.

    After the response started nothing can be changed: the stream ends (EngineGuard adds the
    SSE error event for streams).
    """
    started = False

    async def tracking_send(msg: dict) -> None:
        nonlocal started
        if msg["type"] == "http.response.start":
            started = True
        await send(msg)

    try:
        await app(scope, receive, tracking_send)
    except Exception:
        log.exception("fleetserve %s: unhandled error on %s %s", what, scope.get("method"), scope.get("path"))
        if not started:
            await send_json_error(send, 500, "internal error; it was logged on the server", err_type="InternalServerError")


def _encodable(body: bytes) -> bool:
    # Only reached when an escaped surrogate appears: a valid pair is fine, a lone one is not text.
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except ValueError:
        return True  # not JSON: the app's own parser answers that with its 400
    return True


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1").strip()
    return None


def _bearer(scope: dict) -> str | None:
    value = _header(scope, b"authorization")
    if not value or not value[:7].lower() == "bearer ":
        return None
    return value[7:].strip()


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body read already, then passes disconnects through."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
