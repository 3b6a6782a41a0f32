"""EngineGuard: what a model replica answers when its engine cannot serve, instead of a 500.

    Gate (direct) or ModelServer.http (router) ──► EngineGuard ──► vLLM's OpenAI app ──► engine
                                                   ├─ engine dead      → 503 + Retry-After, retryable
                                                   ├─ prefill queue full (max_waiting_prompt_tokens) → 503 + Retry-After
                                                   ├─ a 5xx before any byte → the same 503 (engine dead) or a JSON 500
                                                   │   that says nothing internal
                                                   └─ an error mid-stream → SSE error event + [DONE]

A 503 carrying `x-fleetserve-retry: 1` means "nothing was done, send it elsewhere": HAProxy
retries 503s on another replica (RAY_SERVE_HAPROXY_RETRY_ON, cluster/ray_env.py) and the
router retries on the header. A dead engine fails Serve's health check on the next period, so
Serve replaces the replica; until then no request it takes is lost.

A dead engine's 503 is held for `dead_hold_s` (about one health-check period plus HAProxy's
check time) before it is sent: answered at once, the dead replica would look like the least
busy one to HAProxy's leastconn and to Serve's router, draw every new request and every retry
(seen: 17 requests refused in 1.4 s, all retries landing on it again). Held, its connections
count as busy and it is marked down by the time the retry is dispatched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from serve_app.schema import ModelLimits
from serve_app.ingress.gate import Receive, Send, call_json_safe, json_error_messages, retry_after

__all__ = ["EngineGuard", "RETRY_HEADER", "GENERATION_PATHS"]

log = logging.getLogger("ray.serve")

RETRY_HEADER = "x-fleetserve-retry"
# Routes that reach the engine's queue; the others (models, tokenize, health) answer without it.
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})


class EngineGuard:
    """ASGI middleware in front of one engine's OpenAI app."""

    def __init__(self, app: Any, *, model: str, alive: Callable[[], bool], waiting_prompt_tokens: Callable[[], int],
                 limits: ModelLimits, dead_hold_s: float = 0.0, on_refused: Callable[[int, str], None] | None = None):
        self.app = app
        self._dead_hold_s = dead_hold_s
        self._on_refused = on_refused  # on_refused(status, reason): the replica's metrics counter
        self.model = model
        self._alive = alive
        self._waiting_tokens = waiting_prompt_tokens
        self._limits = limits
        self.shed = 0  # requests refused for capacity or a dead engine since start (a counter, for metrics)

    def _unavailable(self, reason: str, *, kind: str) -> list[dict]:
        self.shed += 1
        if self._on_refused is not None:
            self._on_refused(503, kind)
        return json_error_messages(
            503, f"model `{self.model}` {reason}; retry", err_type="ServiceUnavailableError", param="model",
            headers=[retry_after(self._limits.retry_after_s), (RETRY_HEADER, "1")])

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") in GENERATION_PATHS:
            refusal = None
            if not self._alive():
                await asyncio.sleep(self._dead_hold_s)
                refusal = self._unavailable("is restarting on this replica (its engine stopped)", kind="engine_dead")
            elif (bound := self._limits.max_waiting_prompt_tokens) and self._waiting_tokens() >= bound:
                refusal = self._unavailable(f"is at capacity ({bound} prompt tokens waiting for prefill)",
                                             kind="prefill_queue_full")
            if refusal:
                for msg in refusal:
                    await send(msg)
                return
        await call_json_safe(self._guarded, scope, receive, send, what=f"replica of {self.model}")

    async def _guarded(self, scope: dict, receive: Receive, send: Send) -> None:
        state = {"held": None, "sse": False, "open": False, "done": False}

        async def guarded_send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                if msg["status"] >= 500:
                    state["held"] = msg  # replaced below: its body may carry an internal message
                    return
                state["sse"] = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                   for k, v in msg.get("headers", ()))
                state["open"] = True
                await send(msg)
            elif msg["type"] == "http.response.body":
                if state["held"] is not None:
                    if not msg.get("more_body", False):
                        await self._replace_5xx(state["held"]["status"], send)
                        state["done"] = True
                    return
                if not msg.get("more_body", False):
                    state["done"] = True
                await send(msg)
            else:
                await send(msg)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if state["open"] and not state["done"]:
                log.exception("fleetserve: %s failed mid-response", self.model)
                await self._end_stream(state["sse"], send)
                return
            if state["held"] is not None and not state["done"]:
                await self._replace_5xx(state["held"]["status"], send)
                return
            raise  # nothing sent yet: call_json_safe answers a JSON 500
        if state["held"] is not None and not state["done"]:
            await self._replace_5xx(state["held"]["status"], send)

    async def _replace_5xx(self, status: int, send: Send) -> None:
        if not self._alive():
            msgs = self._unavailable("is restarting on this replica (its engine stopped)", kind="engine_dead")
        elif status == 503:
            msgs = self._unavailable("is unavailable on this replica", kind="engine_unavailable")
        else:
            log.warning("fleetserve: %s answered %d; the client gets a JSON error without its message", self.model, status)
            msgs = json_error_messages(status, f"model `{self.model}` failed to serve the request; it was logged on "
                                       "the server", err_type="InternalServerError")
        for msg in msgs:
            await send(msg)

    async def _end_stream(self, sse: bool, send: Send) -> None:
        if sse:
            err = {"error": {"message": f"model `{self.model}` stopped mid-stream; retry the request",
                             "type": "ServiceUnavailableError", "param": None, "code": 503}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode(),
                        "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
