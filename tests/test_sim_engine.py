"""The SIMULATOR engine: OpenAI surface, continuous batching bounds and the queue signals it reports."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serve_app.config import SimEngineConfig
from serve_app.engines.sim_engine import FINGERPRINT, SimEngine

FAST = dict(startup_s=0, decode_step_base_s=0.002, decode_step_per_seq_s=0.0, prefill_s_per_token=0.0, chars_per_token=4.0)


def _run(coro):
    return asyncio.run(coro)


async def _engine(**kw):
    return await SimEngine.start_simulator("sim", SimEngineConfig(**{**FAST, **kw}), max_model_len=256)


def _client(engine):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=engine.asgi_app), base_url="http://sim")


def test_streams_max_tokens_chunks_and_says_it_is_a_simulator():
    async def main():
        eng = await _engine()
        async with _client(eng) as c:
            r = await c.post("/v1/chat/completions", json={
                "model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "stream": True, "stream_options": {"include_usage": True}})
            events = [json.loads(l[6:]) for l in r.text.splitlines() if l.startswith("data: {")]
            models = (await c.get("/v1/models")).json()
        eng.shutdown()
        return r, events, models

    r, events, models = _run(main())
    assert r.headers["x-fleetserve-engine"] == "simulator"
    assert sum(1 for e in events if e["choices"]) == 5
    assert events[-1]["usage"]["completion_tokens"] == 5
    assert all(e["system_fingerprint"] == FINGERPRINT for e in events)
    assert models["data"][0]["owned_by"] == FINGERPRINT


def test_batch_is_bounded_by_max_num_seqs_and_the_rest_waits():
    async def main():
        eng = await _engine(max_num_seqs=2, decode_step_base_s=0.01)
        async with _client(eng) as c:
            body = {"model": "sim", "prompt": "x" * 40, "max_tokens": 20}
            tasks = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(5)]
            seen = []
            for _ in range(200):
                await asyncio.sleep(0.01)
                seen.append(eng.stats())
                if all(t.done() for t in tasks):
                    break
            results = await asyncio.gather(*tasks)
        eng.shutdown()
        return seen, results

    seen, results = _run(main())
    assert max(s.running_requests for s in seen) == 2
    assert max(s.waiting_requests for s in seen) == 3
    assert max(s.waiting_tokens for s in seen) == 3 * 10  # 40 chars / 4 chars per token
    assert all(r.json()["usage"]["completion_tokens"] == 20 for r in results)
    assert seen[-1].running_requests == 0 and seen[-1].waiting_requests == 0


def test_kv_capacity_limits_admission():
    async def main():
        eng = await _engine(kv_capacity_tokens=50, decode_step_base_s=0.01)
        async with _client(eng) as c:
            body = {"model": "sim", "prompt": "x" * 40, "max_tokens": 30}  # 10 + 30 = 40 KV tokens each
            tasks = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(3)]
            peak = 0
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.01)
                peak = max(peak, eng.stats().running_requests)
                assert eng.stats().kv_usage <= 1.0
            await asyncio.gather(*tasks)
        eng.shutdown()
        return peak

    assert _run(main()) == 1


@pytest.mark.parametrize("body, status, param", [
    ({"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "sim"}, 400, "messages"),
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": "sim", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 4}, 400, "max_tokens"),
])
def test_bad_requests_get_openai_errors(body, status, param):
    async def main():
        eng = await _engine()
        async with _client(eng) as c:
            r = await c.post("/v1/chat/completions", json=body)
        eng.shutdown()
        return r

    r = _run(main())
    assert r.status_code == status
    assert r.json()["error"]["param"] == param


def test_token_id_prompts_count_exactly_and_text_is_estimated():
    async def main():
        eng = await _engine(chars_per_token=4.3)
        async with _client(eng) as c:
            ids = await c.post("/v1/completions", json={"model": "sim", "prompt": list(range(100, 112)), "max_tokens": 2})
            text = await c.post("/v1/completions", json={"model": "sim", "prompt": "x" * 43, "max_tokens": 2})
        eng.shutdown()
        return ids.json()["usage"], text.json()["usage"]

    ids, text = _run(main())
    assert ids["prompt_tokens"] == 12
    assert text["prompt_tokens"] == 10


def test_admission_cost_is_paid_once_per_admitted_request_by_the_step_that_admits_it():
    """Two requests arriving together share one admitting step: its length is 2 x the admission cost."""
    async def main():
        eng = await _engine(prefill_s_per_request=0.1)
        async with _client(eng) as c:
            body = {"model": "sim", "prompt": [1, 2, 3], "max_tokens": 3, "stream": True}

            async def ttft_and_total() -> tuple[float, float]:
                t0 = asyncio.get_running_loop().time()
                first = None
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if first is None and line.startswith("data: {"):
                            first = asyncio.get_running_loop().time() - t0
                return first, asyncio.get_running_loop().time() - t0

            alone = await ttft_and_total()
            pair = await asyncio.gather(ttft_and_total(), ttft_and_total())
        eng.shutdown()
        return alone, pair

    (ttft_alone, total_alone), pair = _run(main())
    assert ttft_alone >= 0.1  # admission + one 2 ms step
    assert total_alone - ttft_alone < 0.1  # the two later steps do not pay it again (that would be >= 0.2)
    assert all(ttft >= 0.2 for ttft, _ in pair)  # one step admitted both
