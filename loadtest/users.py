"""`LLMUser`: a Locust user that streams OpenAI completions and reports LLM latencies as request events.

Events (request_type = the model name, so Locust's table, CSV and web UI break them down by
model; response_time in ms unless said otherwise):
- TTFT  time to the first content token (not the response headers)         one per request
- ITL   gap between consecutive content chunks                             one per gap
- TPOT  (E2E - TTFT) / (output tokens - 1)                                 one per request
- E2E   request sent -> end of stream; response_length = output tokens;    one per request
        a failed request (non-2xx, broken or empty stream, error chunk) is an E2E failure
        whose message carries the status and the start of the error body
- OTPS  output tokens per second of that request: response_time holds tok/s, not ms
- LAG   open loop only: how late the request was sent against its schedule
Definitions: see `loadtest.stream`. Failed requests fire only the E2E failure.

Every request carries a W3C `traceparent` with a fresh trace id (sampled flag off: the server's
sampling ratio decides), logged as `trace_id` in requests.jsonl, so a slow load-test request can
be found among the server's traces and in its request log.

The stream is read with `raw.read1()` as bytes arrive and timed per read: measured against a
server with a known 100 ms TTFT and 20 ms gap, TTFT and ITL medians land within ~2 ms (see
tests/test_loadtest_live.py). FastHttpUser's chunked readers delay the first token by
~100 ms, so this is an HttpUser. Locust's own per-HTTP-request event is not fired: it would
time the response headers, and mix one more row into the table.
"""

from __future__ import annotations

import http.client
import os
import time

import requests
import urllib3
from locust import HttpUser, task
from locust.event import EventHook
from locust.exception import StopTest

from loadtest._runtime import ProcessRuntime
from loadtest.stream import StreamResult, StreamTimer
from loadtest.workload import ENDPOINT_PATHS, LLMRequest

__all__ = ["LLMUser", "LLMRequestError", "RUNTIME_ATTR", "traceparent"]

RUNTIME_ATTR = "fleetserve_runtime"
"""Environment attribute holding this process's `ProcessRuntime` (set at test start by locust_hooks)."""

_IDLE_POLL_S = 0.5  # nothing to send (closed loop past the duration, open loop schedule done)
_READ_SIZE = 1 << 16
_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class LLMRequestError(Exception):
    """A failed LLM request; str() is what Locust's failure table shows."""


class LLMUser(HttpUser):
    """Sends the plan's requests one at a time: closed loop back to back, open loop on schedule."""

    def __init__(self, environment):
        super().__init__(environment)
        # Locust's own event for the HTTP request would time the headers: send it to a sink.
        self.client.request_event = EventHook()
        self._pending: LLMRequest | None = None
        self._base = self.host.rstrip("/").removesuffix("/v1")

    @property
    def runtime(self) -> ProcessRuntime:
        """This process's plan state; set by `loadtest.locust_hooks` at test start."""
        rt = getattr(self.environment, RUNTIME_ATTR, None)
        if rt is None:
            raise StopTest("LLMUser needs loadtest.locust_hooks.register(events) in the locustfile "
                           "(use loadtest/locustfile.py, or call it from your own)")
        return rt

    def wait_time(self) -> float:
        """Take the next request and wait until it is due (open loop) or the think time (closed loop)."""
        rt = self.runtime
        now = rt.elapsed(time.monotonic())
        if self._pending is None:
            self._pending = rt.workload.next_request(now)
        if self._pending is None:
            return _IDLE_POLL_S
        if self._pending.due_s is not None:
            return max(0.0, self._pending.due_s - now)
        return rt.plan.think_time_s

    @task
    def generate(self) -> None:
        """Send the request taken in wait_time (the very first task run has none yet)."""
        req, self._pending = self._pending, None
        if req is not None:
            self.send(req)

    def send(self, req: LLMRequest) -> StreamResult:
        """Stream one request, fire its events and log it; return what was measured."""
        rt = self.runtime
        url = self._base + ENDPOINT_PATHS[rt.plan.endpoint]
        body = req.body(rt.plan.endpoint, ignore_eos=rt.plan.ignore_eos)
        lag_ms = None
        if req.due_s is not None:
            lag_ms = max(0.0, (rt.elapsed(time.monotonic()) - req.due_s) * 1000)
        trace_id = os.urandom(16).hex()
        headers = {**rt.headers, "traceparent": traceparent(trace_id)}
        start_unix = time.time()
        timer = StreamTimer(time.perf_counter())
        error = None
        try:
            resp = self.client.post(url, json=body, stream=True, headers=headers,
                                    timeout=(30.0, rt.plan.request_timeout_s))
            if resp.status_code == 0:  # HttpSession returns a connection error as a response without a body
                error = f"{type(resp.error).__name__}: {resp.error}"[:500]
            else:
                try:
                    if not 200 <= resp.status_code < 300:
                        error = f"HTTP {resp.status_code}: {resp.text[:500]}"
                    else:
                        raw = resp.raw
                        while data := raw.read1(_READ_SIZE, decode_content=True):
                            timer.feed(data, time.perf_counter())
                finally:
                    resp.close()
        except _STREAM_ERRORS as e:
            error = f"{type(e).__name__}: {e}"[:500]
        result = timer.finish(time.perf_counter(), error=error)
        self._report(req, result, start_unix=start_unix, lag_ms=lag_ms, url=url, trace_id=trace_id)
        return result

    def _report(self, req: LLMRequest, r: StreamResult, *, start_unix: float, lag_ms: float | None, url: str,
                trace_id: str) -> None:
        fire = self.environment.events.request.fire
        e2e_ms = r.e2e_s * 1000

        def event(name: str, value: float, length: int = 0, exc: Exception | None = None) -> None:
            fire(request_type=req.model, name=name, response_time=value, response_length=length, exception=exc,
                 context={}, response=None, start_time=start_unix, url=url)

        if lag_ms is not None:
            event("LAG", lag_ms)
        ttft = r.ttft_s
        tpot = r.tpot_s
        if r.ok:
            event("TTFT", ttft * 1000)
            for gap in r.itl_s:
                event("ITL", gap * 1000)
            if tpot is not None:
                event("TPOT", tpot * 1000)
            event("E2E", e2e_ms, r.output_tokens)
            event("OTPS", r.output_tokens / r.e2e_s if r.e2e_s > 0 else 0.0, r.output_tokens)
        else:
            event("E2E", e2e_ms, r.output_tokens, LLMRequestError(r.error))
        self.runtime.log_request({
            "i": req.index, "proc": self.runtime.proc, "model": req.model, "start_unix_s": round(start_unix, 6),
            "due_s": req.due_s, "lag_ms": lag_ms, "input_tokens": r.prompt_tokens or req.input_tokens,
            "max_tokens": req.max_tokens, "output_tokens": r.output_tokens,
            "ttft_ms": ttft * 1000 if ttft is not None else None, "tpot_ms": tpot * 1000 if tpot is not None else None,
            "e2e_ms": e2e_ms, "ok": r.ok, "error": r.error, "trace_id": trace_id,
        })


def traceparent(trace_id: str) -> str:
    """A W3C traceparent for a new trace: version 00, `trace_id` (32 hex), a random parent id, not sampled."""
    return f"00-{trace_id}-{os.urandom(8).hex()}-00"
