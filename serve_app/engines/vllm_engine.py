"""The vLLM engine behind a replica: AsyncLLM plus vLLM's own OpenAI FastAPI app.

The only module that imports vllm. The flow inside one replica:

    HTTP (Serve direct ingress or our router) ──► vLLM's OpenAI app (validation, chat template,
    tokenization, SSE) ──► AsyncLLM (front end) ──► engine core (scheduler) ──► workers (TP×PP,
    placed in the replica's placement group)
                     scheduler stats + AsyncLLM.get_num_queued_tokens() ──► _QueueStats ──► EngineStats

We build vLLM's args with vLLM's own CLI parser so every server default (tool parsers, chat
template handling, error formats) is exactly what `vllm serve` would use.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from argparse import Namespace
from typing import Any

from serve_app.schema import ModelConfig, Parallelism
from serve_app.engines.base import EngineStats, recent_ttft
from serve_app.engines.registry import EngineSpec
from serve_app.errors import EngineError
from serve_app.telemetry.requests import current_request

__all__ = ["VLLMEngine", "ServerStop", "build_vllm_args"]

log = logging.getLogger(__name__)


def build_vllm_args(
    model_cfg: ModelConfig,
    *,
    model_dir: str,
    parallelism: Parallelism,
    executor: str,
    field_prefix: str = "models[?]",
    traces_endpoint: str | None = None,
) -> Namespace:
    """Return the Namespace `vllm serve` would parse for this deployment.

    `traces_endpoint` turns on vLLM's own request tracing (`--otlp-traces-endpoint`): its
    `llm_request` span with the engine's queue/prefill/decode timings, parented to the
    traceparent of the HTTP request. The spans go through the process's tracer provider that
    serve_app.telemetry installed first (vLLM's own provider then stays unused).
    Raises EngineError naming `<field_prefix>.engine_args.<key>` for a key vLLM does not know.
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="fleetserve"))
    args = parser.parse_args(["--model", model_dir])
    known = set(vars(args))
    for key, value in model_cfg.engine_args.items():
        dest = key.replace("-", "_")
        if dest not in known:
            close = sorted(k for k in known if dest.split("_")[0] in k)[:5]
            raise EngineError(
                f"{field_prefix}.engine_args.{key}: vLLM has no such argument"
                + (f"; did you mean one of {close}?" if close else "")
            )
        setattr(args, dest, value)
    args.served_model_name = [model_cfg.name]
    args.tensor_parallel_size = parallelism.tensor
    args.pipeline_parallel_size = parallelism.pipeline
    args.enable_expert_parallel = parallelism.expert > 1
    args.distributed_executor_backend = executor
    if model_cfg.max_model_len:
        args.max_model_len = model_cfg.max_model_len
    # No args.api_key: vLLM guards only /v1/*; fleetserve's gate checks keys on every route.
    if traces_endpoint:
        args.otlp_traces_endpoint = traces_endpoint
    args.disable_fastapi_docs = True  # /docs, /openapi.json: not part of the API (the gate refuses them too)
    try:
        validate_parsed_serve_args(args)
    except (TypeError, ValueError) as e:
        raise EngineError(f"{field_prefix}.engine_args: vLLM refused the arguments: {e}") from e
    return args


class _QueueStats:
    """Latest scheduler stats of the engine; written by vLLM's stats path, read by Serve's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self.queued_tokens: Any = None  # AsyncLLM.get_num_queued_tokens, set once the engine exists

    def update(self, scheduler_stats, iteration_stats) -> None:
        # Called by vLLM's output handler on the engine's event loop, the thread that changes the
        # request table get_num_queued_tokens sums over: read it here, never from Serve's thread.
        tokens = self.queued_tokens() if self.queued_tokens is not None else None
        with self._lock:
            s = self._stats
            ttft = s.ttft_s
            if iteration_stats is not None:
                for t in iteration_stats.time_to_first_tokens_iter:
                    ttft = recent_ttft(ttft, t)
            if scheduler_stats is not None:
                s = dataclasses.replace(
                    s,
                    waiting_requests=scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                    running_requests=scheduler_stats.num_running_reqs,
                    kv_usage=float(scheduler_stats.kv_cache_usage),
                )
            if tokens is not None:
                s = dataclasses.replace(s, waiting_tokens=int(tokens))
            self._stats = dataclasses.replace(s, ttft_s=ttft)

    def snapshot(self) -> EngineStats:
        with self._lock:
            return self._stats


def _note_finished(out) -> None:
    """Hand the request's tokens, TTFT and finish reason (vLLM's own numbers) to its telemetry record."""
    rec = current_request()
    if rec is None:
        return
    stats = getattr(out, "metrics", None)  # RequestStateStats: present because log stats are on
    rec.engine_output(
        prompt_tokens=len(out.prompt_token_ids) if out.prompt_token_ids is not None else None,
        output_tokens=getattr(stats, "num_generation_tokens", None),
        ttft_s=getattr(stats, "first_token_latency", None),
        finish_reason=out.outputs[0].finish_reason if out.outputs else None,
    )


def _report_finished(engine) -> None:
    """Hand each finished request's numbers to the request's telemetry record (its log line, span).

    We wrap the engine's public `generate` (the serving layer's only entry): the wrapper runs in
    the request's task, so the record is the request's own, before the last byte is sent.
    """
    original = engine.generate

    async def generate(prompt, sampling_params, request_id, *args, **kwargs):
        async for out in original(prompt, sampling_params, request_id, *args, **kwargs):
            if out.finished:
                _note_finished(out)
            yield out

    engine.generate = generate


def _stats_logger_factory(holder: _QueueStats):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class QueueStatsLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            holder.update(scheduler_stats, iteration_stats)

        def log_engine_initialized(self):
            pass

    return QueueStatsLogger


class ServerStop:
    """Stands in for the uvicorn server vLLM's error handler sets `should_exit` on."""

    should_exit = False


class VLLMEngine:
    """A started vLLM engine and the OpenAI app in front of it."""

    def __init__(self, engine_client, asgi_app, stats: _QueueStats, pool=None):
        self._engine = engine_client
        self.asgi_app = asgi_app  # vLLM's app, or with front_ends > 1 the pool that spreads requests over them
        self._stats = stats
        self.pool = pool  # serve_app.engines.front_ends.FrontEndPool, or None with one front end

    @classmethod
    async def start(cls, spec: EngineSpec) -> "VLLMEngine":
        """Start vLLM for `spec`'s model and layout. Raises EngineError naming `<spec.where>.engine_args...`."""
        args = build_vllm_args(spec.model, model_dir=spec.model_dir, parallelism=spec.layout.parallelism,
                               executor=spec.layout.executor, field_prefix=spec.where,
                               traces_endpoint=spec.traces_endpoint)
        return await cls.start_from_args(args, layout=spec.metrics_layout, front_ends=spec.layout.front_ends)

    @classmethod
    async def start_from_args(cls, args: Namespace, *, layout: str | None = None, front_ends: int = 1) -> "VLLMEngine":
        """Start AsyncLLM from `args` (see build_vllm_args) and build vLLM's OpenAI app on it.

        With `layout` (inside Ray), vLLM's metrics go to Ray's metrics agent under vLLM's names
        with a `layout` label (serve_app.telemetry.metrics); without, none are exported.
        With `front_ends` > 1 the engine core takes that many clients: this process is front
        end 0, the others are processes of its own (serve_app.engines.front_ends).
        """
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        holder = _QueueStats()
        loggers = [_stats_logger_factory(holder)]
        if layout is not None:
            from serve_app.telemetry.metrics import vllm_stat_logger

            loggers.append(vllm_stat_logger(layout))
        engine_args = AsyncEngineArgs.from_cli_args(args)
        children: list = []
        try:
            if front_ends > 1:
                from serve_app.engines.front_ends import start_engine_core

                engine, children = start_engine_core(engine_args, count=front_ends, stat_loggers=loggers, args=args)
            else:
                vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
                engine = AsyncLLM.from_vllm_config(
                    vllm_config=vllm_config,
                    usage_context=UsageContext.OPENAI_API_SERVER,
                    stat_loggers=loggers,
                    enable_log_requests=engine_args.enable_log_requests,
                    disable_log_stats=False,  # our stats logger needs the scheduler stats
                )
        except Exception as e:  # vLLM raises many types here; keep its message, add ours
            raise EngineError(f"vLLM engine for {args.served_model_name[0]!r} failed to start: {e}") from e
        # Prompt tokens of requests still in prefill (vLLM's own count, as its max_num_queued_tokens
        # admission uses): the token-weighted queue; scheduler stats count requests only.
        holder.queued_tokens = engine.get_num_queued_tokens
        _report_finished(engine)
        supported_tasks = await engine.get_supported_tasks()
        app = build_app(args, supported_tasks, engine.model_config)
        await init_app_state(engine, app.state, args, supported_tasks)
        # vLLM's engine-error handler stops "the server" when the engine dies (it expects its own
        # uvicorn in app.state.server; without one it raised AttributeError, a 500). Here the
        # replica is the server: EngineGuard answers 503 and Serve's health check replaces it.
        app.state.server = ServerStop()
        if not children:
            return cls(engine, app, holder)
        from serve_app.engines.front_ends import open_pool

        local_queued = engine.get_num_queued_tokens
        try:
            # The children's steps and requests reach this process's loggers as if they were its own.
            pool = await open_pool(app, children, engine.logger_manager.record)
        except Exception as e:
            engine.shutdown()
            raise EngineError(f"vLLM front ends for {args.served_model_name[0]!r} failed to start: {e}") from e
        holder.queued_tokens = lambda: local_queued() + pool.queued_tokens()
        return cls(engine, pool, holder, pool)

    def front_ends(self) -> dict[str, Any]:
        """Requests per front-end process and which are alive (FrontEndPool.status); one front end: this process."""
        import os

        if self.pool is not None:
            return self.pool.status()
        return {"front_ends": 1, "alive": 1, "requests": None, "resent": 0, "pids": [os.getpid()],
                "alive_pids": [os.getpid()]}

    def stats(self) -> EngineStats:
        """Return the latest scheduler signals."""
        return self._stats.snapshot()

    def alive(self) -> bool:
        """False once the engine core has died (cheap: a flag, no call into the engine)."""
        return not self._engine.errored

    async def check_health(self) -> None:
        """Raise if the engine core is dead (then the other front ends are stopped too: they serve nothing)."""
        try:
            await self._engine.check_health()
        except Exception:
            if self.pool is not None:
                self.pool.stop()
            raise

    def shutdown(self) -> None:
        """Stop the front ends, the engine core and its workers."""
        if self.pool is not None:
            self.pool.stop()
        self._engine.shutdown()
