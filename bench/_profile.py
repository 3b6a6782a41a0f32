"""Summarize a py-spy profile (`py-spy record --format raw --full-filenames`) of a serving process.

Pure: parses the collapsed stacks py-spy writes, one line per distinct stack,

    <frame>;<frame>;...;<leaf frame> <samples>      frame = "function (path[:line])"

and attributes each sample to the leaf frame's source (self time): fleetserve's own code,
vLLM's OpenAI layer, its engine client, Serve, Ray core, the ASGI/HTTP stack, asyncio, ...
Inclusive time is given for chosen frames (a function and everything it called).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Frame", "parse_collapsed", "source_of", "self_by_source", "top_self", "inclusive", "SOURCES"]

# (path fragment, source), first match wins. Ours first: serve_app/ sits beside site-packages.
SOURCES = (
    ("/serve_app/", "fleetserve (serve_app)"),
    ("/vllm/entrypoints/", "vLLM OpenAI layer (entrypoints)"),
    ("/vllm/v1/engine/", "vLLM engine client (AsyncLLM, output processing)"),
    ("/vllm/tracing", "vLLM tracing"),
    ("/vllm/", "vLLM other (tokenizer glue, sampling params, logging)"),
    ("/ray/serve/", "Ray Serve (replica, ASGI wrappers, metrics)"),
    ("/ray/", "Ray core (worker, metrics, logging)"),
    ("/opentelemetry/", "OpenTelemetry"),
    ("/prometheus_client/", "prometheus_client"),
    ("/uvicorn/", "ASGI/HTTP (uvicorn, starlette, fastapi, h11)"),
    ("/starlette/", "ASGI/HTTP (uvicorn, starlette, fastapi, h11)"),
    ("/fastapi/", "ASGI/HTTP (uvicorn, starlette, fastapi, h11)"),
    ("/h11/", "ASGI/HTTP (uvicorn, starlette, fastapi, h11)"),
    ("/httptools/", "ASGI/HTTP (uvicorn, starlette, fastapi, h11)"),
    ("/pydantic", "pydantic"),
    ("/transformers/", "tokenizers / transformers"),
    ("/tokenizers/", "tokenizers / transformers"),
    ("/zmq/", "zmq (engine core IPC)"),
    ("/msgspec/", "msgspec (engine core IPC)"),
    ("/asyncio/", "asyncio"),
    ("/uvloop/", "asyncio"),
    ("/logging/", "logging"),
    ("/json/", "json"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    path: str

    def __str__(self) -> str:
        return f"{self.func} ({_short(self.path)})"


def _short(path: str) -> str:
    """The path from its package on: site-packages/vllm/x.py -> vllm/x.py, .../serve_app/x.py -> serve_app/x.py."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/serve_app/" in path:
        return "serve_app/" + path.split("/serve_app/", 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)$", path)
    return m.group(1) if m else path


def parse_collapsed(text: str) -> list[tuple[tuple[Frame, ...], int]]:
    """Return (frames root first, samples) per line of py-spy's raw output; malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            frames.append(Frame(m["func"], m["path"]) if m else Frame(part.strip(), ""))
        out.append((tuple(frames), int(count)))
    return out


def source_of(frame: Frame) -> str:
    """Which code a frame belongs to (SOURCES), 'Python stdlib / other' when none matches."""
    return next((src for frag, src in SOURCES if frag in frame.path), "Python stdlib / other")


def self_by_source(stacks: list[tuple[tuple[Frame, ...], int]]) -> dict[str, float]:
    """Share of samples whose leaf frame is in each source, largest first."""
    total = sum(n for _, n in stacks) or 1
    out: dict[str, float] = {}
    for frames, n in stacks:
        if frames:
            src = source_of(frames[-1])
            out[src] = out.get(src, 0.0) + n / total
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def top_self(stacks: list[tuple[tuple[Frame, ...], int]], k: int = 15) -> list[tuple[str, str, float]]:
    """The k leaf frames with most samples: (frame, source, share of samples)."""
    total = sum(n for _, n in stacks) or 1
    by: dict[Frame, int] = {}
    for frames, n in stacks:
        if frames:
            by[frames[-1]] = by.get(frames[-1], 0) + n
    ranked = sorted(by.items(), key=lambda kv: -kv[1])[:k]
    return [(str(f), source_of(f), n / total) for f, n in ranked]


def inclusive(stacks: list[tuple[tuple[Frame, ...], int]], source: str, k: int = 15) -> list[tuple[str, float]]:
    """The k frames of `source` on most stacks (each stack counted once per frame): inclusive share."""
    total = sum(n for _, n in stacks) or 1
    by: dict[Frame, int] = {}
    for frames, n in stacks:
        for f in set(frames):
            if source_of(f) == source:
                by[f] = by.get(f, 0) + n
    return [(str(f), n / total) for f, n in sorted(by.items(), key=lambda kv: -kv[1])[:k]]
