"""A tiny OpenAI-style streaming server with a known time to first token and inter-token gap.

The ground truth for the load generator's tests: each content chunk k (0-based) of a response
is written at request_arrival + ttft + k * itl, on an absolute schedule so sleeps don't drift.
Before the first content chunk it sends the headers and a role-only chunk at once, so a client
that timed headers or the first chunk instead of the first content token would be caught.

Plain asyncio, HTTP/1.1 with keep-alive and chunked transfer, one SSE event per HTTP chunk.
Special model names inject failures: "fail-500" answers 500 with a JSON error body;
"fail-stream" sends two tokens then drops the connection without ending the chunked body.

Run: python tests/loadtest_helpers/sse_server.py --ttft-ms 100 --itl-ms 20
It prints "PORT <n>" on stdout once listening on 127.0.0.1 (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

__all__ = ["serve"]


def _sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    event = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk(kind: str, model: str, rid: str, *, content: str | None = None, role: bool = False) -> dict:
    if kind == "chat":
        delta: dict = {"role": "assistant", "content": ""} if role else {"content": content}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": content or "", "finish_reason": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


class _Handler:
    def __init__(self, ttft_s: float, itl_s: float, default_tokens: int):
        self.ttft_s, self.itl_s, self.default_tokens = ttft_s, itl_s, default_tokens
        self.count = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        arrived = asyncio.get_running_loop().time()
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method == "GET" and path == "/v1/models":
            payload = json.dumps({"object": "list", "data": [{"id": "sim", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
            await writer.drain()
            return True
        kind = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}.get(path)
        if method != "POST" or kind is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return True
        req = json.loads(body)
        model = req.get("model", "sim")
        if model == "fail-500":
            payload = json.dumps({"error": {"message": "injected failure", "type": "InternalServerError", "code": 500}}).encode()
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(payload), payload))
            await writer.drain()
            return True
        self.count += 1
        rid = f"cmpl-{self.count}"
        n = int(req.get("max_tokens") or self.default_tokens)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        if kind == "chat":
            writer.write(_sse(_chunk(kind, model, rid, role=True)))
        await writer.drain()
        loop = asyncio.get_running_loop()
        for k in range(n):
            delay = arrived + self.ttft_s + k * self.itl_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(_sse(_chunk(kind, model, rid, content=f" t{k}")))
            await writer.drain()
            if model == "fail-stream" and k == 1:
                writer.transport.abort()
                return False
        if (req.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
            writer.write(_sse({"id": rid, "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}))
        writer.write(_sse("[DONE]") + b"0\r\n\r\n")
        await writer.drain()
        return True


async def serve(port: int, ttft_ms: float, itl_ms: float, default_tokens: int = 16) -> None:
    """Serve forever on 127.0.0.1:`port`, printing "PORT <n>" once listening."""
    server = await asyncio.start_server(_Handler(ttft_ms / 1000, itl_ms / 1000, default_tokens), "127.0.0.1", port)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--default-tokens", type=int, default=16)
    a = ap.parse_args()
    try:
        asyncio.run(serve(a.port, a.ttft_ms, a.itl_ms, a.default_tokens))
    except KeyboardInterrupt:
        pass
