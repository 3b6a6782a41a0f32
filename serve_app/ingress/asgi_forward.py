"""Run one HTTP request through an in-process ASGI app and stream the response as items.

This is how the router reaches a model's vLLM OpenAI app across a Serve handle without
speaking the protocol itself: the replica replays the request into vLLM's app and yields

    ("start", status, headers)  then  body chunks (bytes) as vLLM sends them

so SSE streams pass through chunk by chunk, never time-batched.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

__all__ = ["forward_asgi"]

_DONE = object()


async def forward_asgi(
    app: Any,
    *,
    method: str,
    path: str,
    query_string: bytes = b"",
    headers: list[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> AsyncIterator[Any]:
    """Yield ("start", status, headers) and then the body chunks of `app`'s response.

    Closing the iterator early (client gone) tells the app the client disconnected, so vLLM
    aborts the request and frees its KV cache.
    """
    out: asyncio.Queue = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await out.put(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query_string,
        "headers": list(headers),
        "client": ("127.0.0.1", 0),
        "server": ("fleetserve-router", 80),
        "state": {},
    }
    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _t: out.put_nowait(_DONE))
    try:
        while True:
            msg = await out.get()
            if msg is _DONE:
                if task.exception() is not None:
                    raise task.exception()
                return
            if msg["type"] == "http.response.start":
                yield ("start", msg["status"], [(k.decode("latin-1"), v.decode("latin-1")) for k, v in msg.get("headers", [])])
            elif msg["type"] == "http.response.body":
                if msg.get("body"):
                    yield msg["body"]
                if not msg.get("more_body", False):
                    return
    finally:
        disconnected.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=5)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
