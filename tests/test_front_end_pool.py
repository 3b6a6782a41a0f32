"""FrontEndPool (serve_app/engines/front_ends.py) without vLLM: real ASGI apps, a real uvicorn on a
Unix socket for the other front end, real aiohttp relaying. The live test with vLLM's processes is
tests/test_front_ends_live.py."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass

import aiohttp
import uvicorn

from serve_app.engines.front_ends import FrontEndPool, _Child


@dataclass
class _Process:
    """Stands in for the child's multiprocessing.Process: only what the pool asks of it."""

    running: bool = True
    pid: int = 4242
    exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.running

    def terminate(self) -> None:
        self.running = False

    def join(self, timeout=None) -> None:
        pass

    def kill(self) -> None:
        self.running = False


def _app(name: str, chunks: int = 1):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(chunks):
            await send({"type": "http.response.body", "body": f"{name}:{i}:{body.decode()};".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


async def _call(pool, path: str, body: bytes = b"{}") -> tuple[int, bytes]:
    sent = False
    out: list[dict] = []

    async def receive():
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg):
        out.append(msg)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"host", b"x")]}
    await pool(scope, receive, send)
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")


async def _with_child(tmp_path, fn, *, chunks: int = 1, child_app=None, conn=None):
    """Run fn(pool, child) with front end 1 = `child_app` (default: _app("child", chunks)) on a real Unix socket."""
    uds = str(tmp_path / "fe-1.sock")
    server = uvicorn.Server(uvicorn.Config(child_app or _app("child", chunks), uds=uds, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    child = _Child(index=1, process=_Process(), conn=conn, uds=uds,
                   session=aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=uds), auto_decompress=False))
    pool = FrontEndPool(_app("local"), [child])
    try:
        return await fn(pool, child)
    finally:
        await child.session.close()
        server.should_exit = True
        await task


def test_idle_requests_alternate_and_the_cheap_routes_stay_local(tmp_path):
    async def run(pool, child):
        bodies = [(await _call(pool, "/v1/completions", b'{"n":%d}' % i))[1] for i in range(4)]
        models = [(await _call(pool, "/v1/models"))[1] for _ in range(3)]
        return bodies, models, pool.status()

    bodies, models, status = asyncio.run(_with_child(tmp_path, run))
    assert sorted(b.split(b":")[0] for b in bodies) == [b"child", b"child", b"local", b"local"], bodies
    assert all(b.startswith(b"local") for b in models)
    assert status["requests"] == [2, 2] and status["alive"] == 2 and status["pids"] == [os.getpid(), 4242]
    assert b'{"n":0}' in b"".join(bodies)  # the body reached whichever front end took it


def test_the_least_busy_front_end_takes_the_next_request(tmp_path):
    async def run(pool, child):
        pool.local_in_flight = 3  # front end 0 is busy: every new request goes to the other
        got = [(await _call(pool, "/v1/chat/completions"))[1] for _ in range(3)]
        return got

    got = asyncio.run(_with_child(tmp_path, run))
    assert all(b.startswith(b"child") for b in got), got


def test_a_streamed_answer_is_relayed_chunk_by_chunk(tmp_path):
    async def run(pool, child):
        pool.local_in_flight = 1
        return await _call(pool, "/v1/chat/completions", json.dumps({"stream": True}).encode())

    status, body = asyncio.run(_with_child(tmp_path, run, chunks=3))
    assert status == 200 and body.count(b"child:") == 3, body


def test_a_dead_front_end_s_request_is_sent_to_front_end_0_and_it_leaves_the_pool(tmp_path):
    async def run():
        uds = str(tmp_path / "gone.sock")  # nothing listens: the relay fails before any byte
        child = _Child(index=1, process=_Process(running=False, exitcode=-9), conn=None, uds=uds,
                       session=aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=uds)))
        pool = FrontEndPool(_app("local"), [child])
        try:
            first = await _call(pool, "/v1/completions", b'{"keep":1}')
            rest = [await _call(pool, "/v1/completions") for _ in range(3)]
        finally:
            await child.session.close()
        return first, rest, pool.status()

    first, rest, status = asyncio.run(run())
    assert first == (200, b'local:0:{"keep":1};')  # the same body, answered by front end 0
    assert all(r[1].startswith(b"local") for r in rest)
    assert status["resent"] == 1 and status["alive"] == 1 and status["alive_pids"] == [os.getpid()]


def test_a_relayed_request_s_engine_numbers_reach_front_end_0_s_record(tmp_path):
    import multiprocessing

    from serve_app.engines.front_ends import RELAY_ID
    from serve_app.telemetry.requests import RequestRecord, serving

    read, write = multiprocessing.Pipe(duplex=False)

    async def child_app(scope, receive, send):  # as _front_end_proc's _ReportFinished + the engine adapter do
        relay_id = dict(scope["headers"])[RELAY_ID.encode()].decode()
        write.send(("finished", (relay_id, {"prompt_tokens": 5, "output_tokens": 7, "ttft_s": 0.01,
                                            "finish_reason": "length"})))
        await _app("child")(scope, receive, send)

    async def run(pool, child):
        loop = asyncio.get_running_loop()
        loop.add_reader(read.fileno(), pool.on_message, child, loop, lambda *a: None)
        pool.local_in_flight = 1  # send it to the child
        rec = RequestRecord(arrival_s=0.0, route="/v1/completions", model="m")
        try:
            with serving(rec):
                got = await _call(pool, "/v1/completions")
        finally:
            loop.remove_reader(read.fileno())
        return got, rec, pool

    got, rec, pool = asyncio.run(_with_child(tmp_path, run, child_app=child_app, conn=read))
    assert got[1].startswith(b"child")
    assert (rec.prompt_tokens, rec.output_tokens, rec.finish_reason) == (5, 7, "length")
    assert pool._pending == {}


def test_a_client_that_leaves_mid_relay_closes_the_child_s_request(tmp_path):
    seen = asyncio.Event()
    chunks_sent = []

    async def slow_child(scope, receive, send):  # a long stream; vLLM aborts when it sees the disconnect
        await receive()

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            seen.set()

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(600):
            if seen.is_set():
                break
            chunks_sent.append(i)
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
            await asyncio.sleep(0.05)
        watcher.cancel()

    async def run(pool, child):
        pool.local_in_flight = 1
        calls = 0

        async def receive():  # the body, then the client leaves after a few chunks
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b"{}", "more_body": False}
            while len(chunks_sent) < 3:
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(msg):
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "headers": []}
        await pool(scope, receive, send)
        await asyncio.wait_for(seen.wait(), 30)
        return pool

    pool = asyncio.run(_with_child(tmp_path, run, child_app=slow_child))
    assert seen.is_set() and len(chunks_sent) < 600 and pool.children[0].in_flight == 0
