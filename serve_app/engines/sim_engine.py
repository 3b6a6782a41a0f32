"""SIMULATOR engine: a latency model behind the engine boundary, for autoscaling experiments.

It is not a model and says so: responses carry `system_fingerprint: fleetserve-simulator`,
the header `x-fleetserve-engine: simulator`, and /v1/models reports `owned_by:
fleetserve-simulator`. What it simulates is vLLM's scheduler timing on one replica:

    request ──► waiting queue ──admit (max_num_seqs, KV tokens)──► running batch
                 each step: decode_base + per_seq × batch  (+ prefill of newly admitted prompts)
                 every running sequence gets one token per step; first token after its prefill step

so a replica has real, bounded capacity on a 2-core machine, and queue signals (waiting,
running, waiting prompt tokens, KV usage, TTFT) mean what they mean in vLLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_app.schema import SimEngineConfig
from serve_app.engines.base import EngineStats, recent_ttft
from serve_app.engines.batching import BatchModel, Seq
from serve_app.engines.registry import EngineSpec
from serve_app.ingress.http import openai_error

__all__ = ["SimEngine"]

log = logging.getLogger(__name__)

FINGERPRINT = "fleetserve-simulator"


@dataclass
class _Seq:
    prompt_tokens: int
    max_tokens: int
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # int token index, then None at the end
    arrival: float = field(default_factory=time.monotonic)
    generated: int = 0
    cancelled: bool = False  # set by the stream when the client goes; the model drops it next step
    step: Seq | None = None  # its entry in the batch model


class _Scheduler:
    """The pure batch model (serve_app.engines.batching), driven by real asyncio sleeps.

    The replay (serve_app.autoscaling.des) drives the same BatchModel from an event queue; only the
    clock differs.
    """

    def __init__(self, cfg: SimEngineConfig):
        self.cfg = cfg
        self.model = BatchModel(cfg)
        self.ttft = 0.0
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, seq: _Seq) -> None:
        seq.step = Seq(seq.prompt_tokens, seq.max_tokens, arrival_s=seq.arrival, tag=seq)
        self.model.submit(seq.step)
        self._wake.set()

    def cancel(self, seq: _Seq) -> None:
        seq.cancelled = True
        if seq.step is not None:
            self.model.cancel(seq.step)

    def stats(self) -> EngineStats:
        m = self.model
        return EngineStats(
            waiting_requests=len(m.waiting),
            running_requests=len(m.running),
            waiting_tokens=m.waiting_tokens,
            kv_usage=m.kv_usage,
            ttft_s=self.ttft,
        )

    async def _loop(self) -> None:
        m = self.model
        due = None  # when the step in progress ends on the model's clock
        while True:
            if m.idle:
                self._wake.clear()
                await self._wake.wait()
                due = None
            step_s, _ = m.start_step()
            # Steps run back to back on the model's clock, not on sleep's: asyncio.sleep overshoots
            # and the same loop streams the tokens, so sleeping step_s each time ran ~10 % slow on a
            # busy machine (55 ms steps for 50 ms configured). Near saturation that is a queue that
            # never drains, and the replay, which keeps the configured time, read TTFT p95 26-29 %
            # low. A step that ends late shortens the next sleep; a stall longer than a step is
            # not made up (the next step starts now).
            now = time.monotonic()
            due = now + step_s if due is None or now - due > step_s else due + step_s
            await asyncio.sleep(max(0.0, due - now))
            now = time.monotonic()
            batch = [s.tag for s in m.running.values()]  # everyone in this step gets a token
            done = {id(s.tag) for s in m.finish(1)}
            for seq in batch:
                if seq.cancelled:
                    continue
                if seq.generated == 0:
                    t = now - seq.arrival
                    self.ttft = recent_ttft(self.ttft, t)
                seq.out.put_nowait(seq.generated)
                seq.generated += 1
                if id(seq) in done:
                    seq.out.put_nowait(None)


def _prompt_tokens(body: dict, chat: bool, chars_per_token: float) -> int | None:
    """Prompt length in tokens: exact for a token-id prompt, else estimated from its characters."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return None
        chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 16 for m in msgs if isinstance(m, dict))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return len(prompt)  # token ids: nothing to estimate
        if isinstance(prompt, str):
            chars = len(prompt)
        elif isinstance(prompt, list) and prompt:
            chars = sum(len(str(p)) for p in prompt)
        else:
            return None
    return max(1, int(chars / chars_per_token))


class SimEngine:
    """The simulator behind the engine boundary (see module docstring)."""

    def __init__(self, name: str, cfg: SimEngineConfig, max_model_len: int):
        self.name = name
        self.cfg = cfg
        self.max_model_len = max_model_len
        self._sched = _Scheduler(cfg)
        self.asgi_app = Starlette(routes=[
            Route("/health", self._health, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
        ])

    @classmethod
    async def start(cls, spec: EngineSpec) -> "SimEngine":
        """Wait out the simulated cold start of `spec.model.sim`, then return a serving simulator."""
        return await cls.start_simulator(spec.model.name, spec.model.sim, spec.model.max_model_len)

    @classmethod
    async def start_simulator(cls, name: str, cfg: SimEngineConfig, max_model_len: int | None) -> "SimEngine":
        """`start` without a model config: for calibration and tests of the simulator alone."""
        log.warning("fleetserve: starting the SIMULATOR engine for %r (a latency model, not a model)", name)
        await asyncio.sleep(cfg.startup_s)
        return cls(name, cfg, max_model_len or 4096)

    def stats(self) -> EngineStats:
        return self._sched.stats()

    def alive(self) -> bool:
        """The simulator cannot die on its own."""
        return True

    async def check_health(self) -> None:
        if self._sched._task.done():
            raise RuntimeError(f"simulator scheduler stopped: {self._sched._task.exception()!r}")

    def shutdown(self) -> None:
        self._sched._task.cancel()

    # ---- OpenAI surface (just enough for load tests and autoscaling experiments) ----
    async def _health(self, _: Request) -> Response:
        return Response(status_code=200)

    async def _models(self, _: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": self.name, "object": "model", "created": 0, "owned_by": FINGERPRINT, "max_model_len": self.max_model_len}]})

    async def _chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, *, chat: bool) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return openai_error(400, f"request body is not valid JSON: {e}", err_type="BadRequestError")
        if not isinstance(body, dict):
            return openai_error(400, "request body must be a JSON object", err_type="BadRequestError")
        if body.get("model") != self.name:
            return openai_error(404, f"The model `{body.get('model')}` does not exist.", err_type="NotFoundError", param="model")
        prompt_tokens = _prompt_tokens(body, chat, self.cfg.chars_per_token)
        if prompt_tokens is None:
            field_name = "messages" if chat else "prompt"
            return openai_error(400, f"`{field_name}` is required", err_type="BadRequestError", param=field_name)
        max_tokens = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return openai_error(400, f"max_tokens must be at least 1, got {max_tokens}", err_type="BadRequestError", param="max_tokens")
        if prompt_tokens + max_tokens > self.max_model_len:
            return openai_error(
                400, f"This model's maximum context length is {self.max_model_len} tokens; the request needs "
                f"{prompt_tokens} prompt + {max_tokens} output tokens.", err_type="BadRequestError", param="max_tokens")
        seq = _Seq(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        self._sched.submit(seq)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-sim-{uuid.uuid4().hex[:16]}"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}
        headers = {"x-fleetserve-engine": "simulator"}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._sse(seq, rid, chat, usage if include_usage else None),
                                     media_type="text/event-stream", headers=headers)
        try:
            while await seq.out.get() is not None:
                pass
        finally:
            if seq.generated < seq.max_tokens:
                self._sched.cancel(seq)
        text = " tok" * max_tokens
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"} if chat
                  else {"index": 0, "text": text, "finish_reason": "length"})
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                             "model": self.name, "system_fingerprint": FINGERPRINT, "choices": [choice], "usage": usage},
                            headers=headers)

    async def _sse(self, seq: _Seq, rid: str, chat: bool, usage: dict | None):
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": int(time.time()), "model": self.name, "system_fingerprint": FINGERPRINT}
        try:
            while (i := await seq.out.get()) is not None:
                last = i == seq.max_tokens - 1
                choice = ({"index": 0, "delta": {"content": " tok"}, "finish_reason": "length" if last else None} if chat
                          else {"index": 0, "text": " tok", "finish_reason": "length" if last else None})
                yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
            if usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if seq.generated < seq.max_tokens:  # client gone: free its batch slot
                self._sched.cancel(seq)
