"""More than one OpenAI front-end process for one vLLM engine (models[].front_ends > 1).

    replica process = front end 0 ── FrontEndPool ──┬─► vLLM's OpenAI app ─► AsyncLLM client 0 ──┐
      (gate, telemetry, EngineGuard stay here)      └─► relay over a Unix socket ─► front end i:  ├─ ZMQ ─► engine core
                                                        uvicorn + vLLM's OpenAI app + client i ──┘

This is vLLM's multi-API-server mode (`vllm serve --api-server-count N`) inside a Serve replica,
built from the functions that command runs (bind_engine_zmq_listeners, launch_core_engines, the
client_addresses of AsyncLLM): the engine core takes N clients, each with its own socket pair.
What moves out of the replica process is what costs CPU per token: chat template and
tokenization, incremental detokenization (AsyncLLM's output processor runs in the client),
OpenAI response objects and their JSON. The replica process keeps a byte relay for the requests
it hands out, so its own cap rises by roughly (full cost / relay cost), not by N.

Why not one shared listening socket as `vllm serve` does: the replica's HTTP server (Serve's
direct ingress) and Serve's actor calls (router mode) both land in the replica process, and
Serve binds its socket without SO_REUSEPORT; only a relay keeps Serve's routing, health checks
and draining.

Faults: a front end that dies is dropped from the pool (the engine core accepts its clients only
at start, so it returns with the replica's next replacement); a non-streaming request it held
is sent again to another front end (its first copy may still run to its end in the engine); a
stream it was sending ends with EngineGuard's SSE error + [DONE]. Engine-core death is vLLM's
own monitor's to detect: it fails client 0, the health check, and the pool stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any

from serve_app.ingress.gate import replay_body
from serve_app.ingress.guard import GENERATION_PATHS
from serve_app.telemetry.requests import current_request

__all__ = ["FrontEndPool", "open_pool", "start_engine_core"]

log = logging.getLogger("ray.serve")

RELAY_ID = "x-fleetserve-relay-id"  # front end 0's key for a relayed request's engine numbers
_HOP_BY_HOP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade",
                         RELAY_ID.encode()})
_HOP_BY_HOP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
# How long a finished relay waits for its engine numbers (sent before the response's last byte,
# read on the same loop: almost always there already) before its log line goes without them.
REPORT_WAIT_S = 0.2
START_TIMEOUT_S = 600.0  # a front end imports vLLM and tokenizer, then waits for the engine's ready message


@dataclass
class _Child:
    """One extra front-end process, as front end 0 sees it."""

    index: int
    process: Any  # multiprocessing Process (spawn)
    conn: Any  # the child's end-of-life and stats pipe (read side)
    uds: str
    session: Any = None  # aiohttp.ClientSession over the Unix socket
    alive: bool = True
    ready: asyncio.Future | None = None
    queued_tokens: int = 0  # the child's own AsyncLLM.get_num_queued_tokens, last reported
    in_flight: int = 0


@dataclass
class FrontEndPool:
    """Front end 0's view of the N front ends: where each request goes, what each reports."""

    local_app: Any  # vLLM's OpenAI app on client 0
    children: list[_Child] = field(default_factory=list)
    local_in_flight: int = 0
    served: list[int] = field(default_factory=list)  # requests started per front end (index 0 = local)
    resent: int = 0  # non-streaming requests sent again after their front end died
    _next: int = 0
    _pending: dict = field(default_factory=dict)  # relay id -> (front end 0's RequestRecord, reported Event)

    def __post_init__(self) -> None:
        self.served = [0] * (1 + len(self.children))

    @property
    def router(self) -> Any:
        """Front end 0's routes: a route added there (DirectModelServer's audit trail) is served by the pool too."""
        return self.local_app.router

    def status(self) -> dict[str, Any]:
        """What each front end has done: a value for the replica's callers (tests, `fleetserve check`)."""
        return {"front_ends": 1 + len(self.children), "alive": self.alive_count, "requests": list(self.served),
                "resent": self.resent, "pids": [os.getpid()] + [c.process.pid for c in self.children],
                "alive_pids": [os.getpid()] + [c.process.pid for c in self.children if c.alive]}

    @property
    def alive_count(self) -> int:
        """Front ends serving now (front end 0 always, while the replica lives)."""
        return 1 + sum(c.alive for c in self.children)

    def queued_tokens(self) -> int:
        """Prompt tokens waiting for prefill across the children (front end 0's are read from its own client)."""
        return sum(c.queued_tokens for c in self.children if c.alive)

    def _pick(self) -> _Child | None:
        """The least-busy front end (None = front end 0); ties go round-robin so idle load spreads too."""
        candidates: list[tuple[int, int, _Child | None]] = [(self.local_in_flight, 0, None)]
        for c in self.children:
            if c.alive:
                candidates.append((c.in_flight, c.index, c))
        self._next = (self._next + 1) % len(candidates)
        best = min(candidates, key=lambda t: (t[0], (t[1] - self._next) % len(candidates)))
        return best[2]

    async def __call__(self, scope: dict, receive, send) -> None:
        # Only the routes that reach the engine (their cost grows with tokens) are spread; /v1/models,
        # tokenize, health answer from front end 0 (cheap, and they must work while the others start or die).
        if scope["type"] != "http" or scope.get("path") not in GENERATION_PATHS:
            return await self.local_app(scope, receive, send)
        child = self._pick()
        if child is None:
            return await self._local(scope, receive, send)
        body = await _read_body(receive)
        started = False

        async def relay_send(msg: dict) -> None:
            nonlocal started
            started = True
            await send(msg)

        child.in_flight += 1
        self.served[child.index] += 1
        relay_id, reported = self._expect_report()
        try:
            if not await _until_disconnect(_relay(child, scope, body, relay_send, relay_id), receive):
                return  # the client left: closing the relay makes the child's vLLM abort the request
            if reported is not None and not reported.is_set():
                try:
                    await asyncio.wait_for(reported.wait(), REPORT_WAIT_S)
                except asyncio.TimeoutError:
                    pass
            return
        except Exception as e:  # aiohttp's errors, or the child's socket gone
            if started:
                raise  # mid-response: EngineGuard ends the stream / the body
            self._check(child)
            log.warning("fleetserve: front end %d failed before answering (%s); sending the request to front end 0",
                        child.index, type(e).__name__)
            self.resent += 1
        finally:
            child.in_flight -= 1
            self._pending.pop(relay_id, None)
        await self._local(scope, replay_body(body, receive), send)  # the client's disconnect still reaches vLLM

    def _expect_report(self) -> tuple[str, asyncio.Event | None]:
        """A relay id, and the Event set when the child reports the request's engine numbers (None: no record)."""
        relay_id = uuid.uuid4().hex
        rec = current_request()
        if rec is None:
            return relay_id, None
        reported = asyncio.Event()
        self._pending[relay_id] = (rec, reported)
        return relay_id, reported

    async def _local(self, scope: dict, receive, send) -> None:
        self.local_in_flight += 1
        self.served[0] += 1
        try:
            await self.local_app(scope, receive, send)
        finally:
            self.local_in_flight -= 1

    def _check(self, child: _Child) -> None:
        if child.alive and not child.process.is_alive():
            self._lost(child)

    def _lost(self, child: _Child) -> None:
        if not child.alive:
            return
        child.alive = False
        log.warning("fleetserve: front end %d (pid %s) exited with %s; %d front ends serve on",
                    child.index, child.process.pid, child.process.exitcode, self.alive_count)

    def on_message(self, child: _Child, loop: asyncio.AbstractEventLoop, replay_stats) -> None:
        """The child's pipe is readable: a stats report, its ready note, or EOF (it died)."""
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            loop.remove_reader(child.conn.fileno())
            self._lost(child)
            if child.ready is not None and not child.ready.done():
                child.ready.set_exception(RuntimeError(f"front end {child.index} exited while starting"))
            return
        if kind == "stats":
            scheduler_stats, iteration_stats, queued = payload
            child.queued_tokens = queued
            replay_stats(scheduler_stats, iteration_stats)
        elif kind == "finished":
            relay_id, numbers = payload
            if (entry := self._pending.get(relay_id)) is not None:
                entry[0].engine_output(**numbers)
                entry[1].set()
        elif kind == "ready" and child.ready is not None and not child.ready.done():
            child.ready.set_result(payload)
        elif kind == "failed" and child.ready is not None and not child.ready.done():
            child.ready.set_exception(RuntimeError(f"front end {child.index} failed to start: {payload}"))

    def stop(self) -> None:
        """Stop the extra front ends (the engine core is its launcher's to stop). Safe to call twice."""
        for c in self.children:
            if c.process.is_alive():
                c.process.terminate()
        for c in self.children:
            c.process.join(timeout=5)
            if c.process.is_alive():
                c.process.kill()
            c.alive = False
            if c.session is not None and not c.session.closed:
                session, c.session = c.session, None
                try:
                    asyncio.get_running_loop().create_task(session.close())
                except RuntimeError:  # no loop here (a finalizer): the process is ending anyway
                    pass


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


async def _until_disconnect(work, receive) -> bool:
    """Run `work` unless the client disconnects first (then cancel it); True when it ran to its end.

    vLLM aborts a request whose client has gone only in the process that serves it: the relay
    passes the disconnect on by closing its connection to the child.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()  # re-raise the relay's error, if any
    return True


async def _relay(child: _Child, scope: dict, body: bytes, send, relay_id: str) -> None:
    """Send the request to the child's server and its response back, chunk by chunk as it comes."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ()) if k.lower() not in _HOP_BY_HOP]
    headers.append((RELAY_ID, relay_id))
    url = "http://front-end" + scope.get("raw_path", scope["path"].encode()).decode("latin-1").split("?")[0]
    if scope.get("query_string"):
        url += "?" + scope["query_string"].decode("latin-1")
    async with child.session.request(scope["method"], url, headers=headers, data=body) as resp:
        out = [(k, v) for k, v in resp.raw_headers if k.lower() not in _HOP_BY_HOP_RESPONSE]
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def launch_front_ends(args: Namespace, listeners: Any, count: int) -> list[_Child]:
    """Start front ends 1..count-1 on their ZMQ listeners (open_pool waits for them)."""
    import multiprocessing

    from serve_app.engines._front_end_proc import front_end_main

    ctx = multiprocessing.get_context("spawn")  # never fork a process holding Ray's and vLLM's threads
    loop = asyncio.get_running_loop()
    run_dir = tempfile.mkdtemp(prefix="fleetserve-fe-")
    children = []
    for i in range(1, count):
        read, write = ctx.Pipe(duplex=False)
        uds = os.path.join(run_dir, f"front-end-{i}.sock")
        client_config = {"input_address": listeners.inputs[i].address, "output_address": listeners.outputs[i].address,
                         "input_listener": listeners.inputs[i].socket, "output_listener": listeners.outputs[i].socket,
                         "client_count": count, "client_index": i}
        proc = ctx.Process(target=front_end_main, name=f"fleetserve-front-end-{i}",
                           args=(i, args, client_config, write, uds), daemon=True)
        proc.start()
        write.close()
        listeners.inputs[i].close()
        listeners.outputs[i].close()
        children.append(_Child(index=i, process=proc, conn=read, uds=uds, ready=loop.create_future()))
    return children


async def open_pool(local_app: Any, children: list[_Child], replay_stats) -> FrontEndPool:
    """Wait for every child's ready note, open a relay session to each, and return the pool."""
    import aiohttp

    loop = asyncio.get_running_loop()
    pool = FrontEndPool(local_app, children)
    for c in children:
        loop.add_reader(c.conn.fileno(), pool.on_message, c, loop, replay_stats)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in children)), timeout=START_TIMEOUT_S)
    except BaseException:
        pool.stop()
        raise
    for c in children:
        c.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=c.uds, limit=0), auto_decompress=False,
                                          timeout=aiohttp.ClientTimeout(total=None))
    log.info("fleetserve: %d front ends ready in %.1f s (pids %s)", 1 + len(children), time.monotonic() - t0,
             [c.process.pid for c in children])
    return pool


def start_engine_core(engine_args: Any, *, count: int, stat_loggers: list, args: Namespace) -> tuple[Any, list[_Child]]:
    """Launch the engine core for `count` clients, start front ends 1..count-1, and return (client 0, children).

    What `vllm serve --api-server-count` does, with this process as API server 0.
    """
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor

    usage = UsageContext.OPENAI_API_SERVER
    engine_args._api_process_count = count
    engine_args._api_process_rank = -1  # the launcher's config, as vLLM's own
    vllm_config = engine_args.create_engine_config(usage_context=usage)
    listeners = bind_engine_zmq_listeners(vllm_config, count)
    children: list[_Child] = []
    try:
        with launch_core_engines(vllm_config, Executor.get_class(vllm_config), True, listeners.addresses) as launch:
            children = launch_front_ends(args, listeners, count)
            # A front end that dies while the engine loads aborts the start (vLLM's own watch).
            launch.watched_frontend_processes = [c.process for c in children]
        engine_args._api_process_rank = 0
        client_config = {"input_address": listeners.inputs[0].address, "output_address": listeners.outputs[0].address,
                         "input_listener": listeners.inputs[0].socket, "output_listener": listeners.outputs[0].socket}
        engine = AsyncLLM.from_vllm_config(
            vllm_config=engine_args.create_engine_config(usage_context=usage), usage_context=usage,
            stat_loggers=stat_loggers, enable_log_requests=engine_args.enable_log_requests, disable_log_stats=False,
            client_addresses=client_config, client_count=count, client_index=0)
    except BaseException:
        for c in children:
            c.process.kill()
        for listener in (*listeners.inputs, *listeners.outputs):
            listener.cleanup()
        raise
    # vLLM watches the engine-core processes only when its client launched them; hand it ours so
    # an engine death fails client 0 (EngineGuard's 503, Serve's health check) exactly as with one.
    core = engine.engine_core
    core.resources.engine_manager = launch.engine_manager
    core.start_engine_core_monitor()
    return engine, children
