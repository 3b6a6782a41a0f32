"""Requests the harness sends itself: readiness (a real chat completion) and timed probe streams.

Plain sockets and http.client, nothing shared with the load generator: the probe stream is
read with one `recv` per arrival and each read is timed, so a burst (many tokens in one read)
is visible as it happened on the wire.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench._measure import StreamCheck, check_stream, token_times_from_reads

__all__ = ["chat_ok", "stream_probe", "ProbeStream", "PROBE_PROMPT"]

PROBE_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _body(model: str, max_tokens: int, *, stream: bool) -> bytes:
    return json.dumps({
        "model": model, "messages": [{"role": "user", "content": PROBE_PROMPT}], "max_tokens": max_tokens,
        "ignore_eos": True, "stream": stream, "temperature": 0.0,
    }).encode()


def chat_ok(base_url: str, model: str, *, timeout_s: float = 10.0) -> bool:
    """True when a non-streamed chat completion of `model` at `base_url` returns 200 with a choice."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    try:
        conn.request("POST", "/v1/chat/completions", body=_body(model, 4, stream=False),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status == 200 and bool(json.loads(data).get("choices"))
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()


@dataclass(frozen=True)
class ProbeStream:
    """One timed probe stream and its verdict."""

    status: int
    check: StreamCheck


def stream_probe(base_url: str, model: str, *, max_tokens: int = 64, timeout_s: float = 60.0) -> ProbeStream:
    """Stream one chat completion on a raw socket, time every read, and judge the stream."""
    u = urlsplit(base_url)
    body = _body(model, max_tokens, stream=True)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reads: list[tuple[float, bytes]] = []
    with socket.create_connection((u.hostname, u.port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(head + body)
        buf = b""
        while b"\r\n\r\n" not in buf:  # the response head
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        now = time.perf_counter()
        header, _, rest = buf.partition(b"\r\n\r\n")
        if rest:
            reads.append((now, rest))
        while data := sock.recv(65536):
            reads.append((time.perf_counter(), data))
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    chunked = any(line.lower().startswith("transfer-encoding:") and "chunked" in line.lower() for line in lines[1:])
    times = token_times_from_reads(reads, chunked=chunked) if status == 200 else []
    return ProbeStream(status, check_stream(times, start_s=start))
