"""The body of one extra front-end process (serve_app.engines.front_ends): started by spawn.

    pipe to front end 0 ◄── ("ready", pid) / ("failed", message) / ("stats", ...) per engine step
    Unix socket ◄── front end 0's relay ──► uvicorn ──► vLLM's OpenAI app ──► AsyncLLM client i ──► engine core

The engine core returns its scheduler stats to one client per step, whichever has outputs then,
so this process forwards every report (and its own count of prompt tokens waiting for prefill)
to front end 0, whose stat loggers (the autoscaling signals, vLLM's metrics through Ray) then
see every step and every request, as with one front end. Each finished request's engine numbers
(tokens, TTFT, finish reason) go back the same way, keyed by the relay's RELAY_ID header, before
its last byte: front end 0's request log line and span then carry them as with one front end.
"""

from __future__ import annotations

import asyncio
import os
import signal
from argparse import Namespace
from typing import Any

__all__ = ["front_end_main"]


def front_end_main(index: int, args: Namespace, client_config: dict[str, Any], conn: Any, uds: str) -> None:
    """Process entry: serve vLLM's OpenAI app on `uds` with engine client `index`; report on `conn`."""
    import setproctitle  # a vLLM dependency; vLLM names its engine core the same way

    # Named so `ps` and tests tell it from the engine core and vLLM's workers.
    setproctitle.setproctitle(f"fleetserve::FrontEnd:{args.served_model_name[0]}:{index}")
    # Front end 0 stops us (terminate); a Ctrl-C on the terminal is its and Ray's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        asyncio.run(_serve(index, args, client_config, conn, uds, parent))
    except Exception as e:  # reported to front end 0, which names it in the replica's start-up error
        try:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        except OSError:
            pass
        raise


async def _exit_with(parent: int) -> None:
    """End this process when front end 0 is gone: a SIGKILLed replica gets no chance to stop us."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)  # a poll, not a wait for a condition: no portable parent-death event
    os._exit(0)


async def _serve(index: int, args: Namespace, client_config: dict[str, Any], conn: Any, uds: str, parent: int) -> None:
    import uvicorn
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    from serve_app.engines.front_ends import RELAY_ID
    from serve_app.engines.vllm_engine import ServerStop, _report_finished

    engine_args = AsyncEngineArgs.from_cli_args(args)
    count = client_config["client_count"]
    engine_args._api_process_count = count  # as `vllm serve --api-server-count` sets them for each API server
    engine_args._api_process_rank = index
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    holder: dict[str, Any] = {}
    engine = AsyncLLM.from_vllm_config(
        vllm_config=vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
        stat_loggers=[_forwarding_logger(conn, holder)], enable_log_requests=engine_args.enable_log_requests,
        disable_log_stats=False, client_addresses=dict(client_config), client_count=count, client_index=index)
    holder["queued"] = engine.get_num_queued_tokens
    _report_finished(engine)
    supported_tasks = await engine.get_supported_tasks()
    vllm_app = build_app(args, supported_tasks, engine.model_config)
    await init_app_state(engine, vllm_app.state, args, supported_tasks)
    vllm_app.state.server = ServerStop()
    app = _ReportFinished(vllm_app, conn, RELAY_ID.encode())
    if os.path.exists(uds):
        os.unlink(uds)
    server = uvicorn.Server(uvicorn.Config(app, uds=uds, log_level="warning", access_log=False,
                                           timeout_keep_alive=3600, lifespan="on"))
    orphan_watch = asyncio.create_task(_exit_with(parent))  # noqa: F841 - held until the process ends
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if task.done():
        task.result()  # raises why uvicorn did not start
    conn.send(("ready", os.getpid()))
    try:
        await task
    finally:
        engine.shutdown()


def _forwarding_logger(conn: Any, holder: dict[str, Any]):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class ForwardingStatLogger(StatLoggerBase):
        """Sends each step's stats to front end 0 (runs on this process's engine output loop)."""

        def __init__(self, vllm_config, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            queued = holder["queued"]() if "queued" in holder else 0
            conn.send(("stats", (scheduler_stats, iteration_stats, int(queued))))

        def log_engine_initialized(self):
            pass

    return ForwardingStatLogger


class _PipeRecord:
    """The current request's record in this process: its engine numbers go to front end 0's record."""

    def __init__(self, relay_id: str, conn: Any):
        self._id, self._conn = relay_id, conn

    def engine_output(self, **numbers: Any) -> None:
        self._conn.send(("finished", (self._id, numbers)))


class _ReportFinished:
    """ASGI middleware: a relayed request (it carries front end 0's relay id) reports its engine numbers back."""

    def __init__(self, app: Any, conn: Any, header: bytes):
        self.app, self._conn, self._header = app, conn, header

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        from serve_app.telemetry.requests import serving

        relay_id = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == self._header), None)
        if scope["type"] != "http" or relay_id is None:
            return await self.app(scope, receive, send)
        with serving(_PipeRecord(relay_id, self._conn)):
            await self.app(scope, receive, send)
