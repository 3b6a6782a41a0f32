"""Time an OpenAI streaming (SSE) response from the bytes as they arrive, with the clock passed in.

Pure: the user reads the socket and calls `feed(data, now_s)` with the time of each read;
this module splits lines, finds content tokens and computes the latencies. Definitions:
- TTFT: request sent -> first chunk carrying content (a role-only first chunk, as vLLM's chat
  endpoint sends, and the response headers do not count).
- ITL: gap between consecutive content chunks. vLLM sends one token per chunk, so this is the
  inter-token latency; a server that batches tokens into chunks (Ray Serve LLM groups output
  every 50 ms by default) shows chunk gaps instead.
- E2E: request sent -> end of stream ([DONE] or end of body).
- TPOT: (E2E - TTFT) / (output_tokens - 1), per request (None for a single token).
- output tokens: usage.completion_tokens from the final usage chunk when present, else the
  number of content chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["StreamTimer", "StreamResult"]


@dataclass
class StreamResult:
    """What one streamed response measured; times in seconds on the caller's clock."""

    ok: bool
    error: str | None
    start_s: float
    end_s: float
    token_times_s: list[float] = field(default_factory=list)
    """Arrival time of each content chunk."""
    output_tokens: int = 0
    prompt_tokens: int | None = None

    @property
    def ttft_s(self) -> float | None:
        """Time to the first content chunk, or None if none arrived."""
        return self.token_times_s[0] - self.start_s if self.token_times_s else None

    @property
    def e2e_s(self) -> float:
        """Request sent to end of stream."""
        return self.end_s - self.start_s

    @property
    def itl_s(self) -> list[float]:
        """Gaps between consecutive content chunks."""
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first, or None for fewer than two tokens."""
        ttft = self.ttft_s
        if ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - ttft) / (self.output_tokens - 1)


class StreamTimer:
    """Accumulate one SSE response: `feed` bytes with their read time, then `finish`."""

    def __init__(self, start_s: float):
        self.start_s = start_s
        self._buf = b""
        self._times: list[float] = []
        self._usage: dict | None = None
        self._done = False
        self._error: str | None = None

    def feed(self, data: bytes, now_s: float) -> None:
        """Take the bytes of one read, which arrived at `now_s`."""
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._line(line.strip(), now_s)

    def _line(self, line: bytes, now_s: float) -> None:
        if not line.startswith(b"data:") or self._done:
            return  # blank separators, ": keep-alive" comments, event: lines
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            self._error = self._error or f"malformed SSE data: {payload[:200]!r}"
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self._error = self._error or f"error in stream: {json.dumps(obj['error'])[:500]}"
            return
        if obj.get("usage"):
            self._usage = obj["usage"]
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or choice.get("text")
            if text:
                self._times.append(now_s)
                break

    def finish(self, now_s: float, *, error: str | None = None) -> StreamResult:
        """Close the response at `now_s`; `error` is a transport failure seen by the caller."""
        if self._buf.strip():
            self._line(self._buf.strip(), now_s)
            self._buf = b""
        err = error or self._error
        if err is None and not self._done:
            err = "stream ended without data: [DONE]"
        if err is None and not self._times:
            err = "stream had no content tokens"
        usage = self._usage or {}
        n_out = usage.get("completion_tokens")
        return StreamResult(
            ok=err is None, error=err, start_s=self.start_s, end_s=now_s, token_times_s=self._times,
            output_tokens=int(n_out) if isinstance(n_out, int) else len(self._times),
            prompt_tokens=usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None,
        )
