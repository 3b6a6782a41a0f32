"""Two front-end processes for one engine (models[].front_ends: 2), on real Serve + vLLM's tiny model.

One app: direct ingress (HAProxy -> the replica's port), one replica whose engine core takes two
clients: the replica process (front end 0) and a process of its own (front end 1). Streams are
served by both and vLLM's metrics (exported by front end 0) count every one of them; SIGKILLing
front end 1 while it holds non-streaming requests loses none of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import psutil
import pytest

from conftest import wait_until
from telemetry_helpers.scrape import count_by_model, scrape
from trust_helpers import KEY, live_app, model, replica_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APP = "front-ends"
DEPLOYMENT = "model-tiny-dense"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import ray

    log_path = tmp_path_factory.mktemp("reqlog") / "requests.jsonl"
    cfg = {"name": APP, "api_keys": [KEY], "telemetry": {"request_log": str(log_path)},
           "models": [model(front_ends=2, autoscaling={"min_replicas": 1, "max_replicas": 1})]}
    saved = os.environ.get("RAY_metrics_report_interval_ms")
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # Ray's default 10 s would make the metrics test wait
    try:
        with live_app(cfg) as (config, url):
            [port] = [n["MetricsExportPort"] for n in ray.nodes() if n.get("MetricsExportPort")]
            yield url, f"http://127.0.0.1:{port}/metrics", log_path
    finally:
        os.environ.pop("RAY_metrics_report_interval_ms", None)
        if saved is not None:
            os.environ["RAY_metrics_report_interval_ms"] = saved


def _status() -> dict:
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT, app_name=APP).front_ends.remote().result(timeout_s=30)


async def _chat(client: httpx.AsyncClient, *, stream: bool, tokens: int) -> tuple[int, int]:
    """(status, completion tokens) of one chat request; a stream's from its usage chunk, -1 without [DONE]."""
    body = {"model": "tiny-dense", "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
            "ignore_eos": True, "stream": stream}
    if not stream:
        r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
        return r.status_code, (r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0)
    body["stream_options"] = {"include_usage": True}
    got, done = 0, False
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and (usage := json.loads(line[6:]).get("usage")):
                got = usage["completion_tokens"]
    return r.status_code, got if done else -1


def _front_end_gauge(metrics: str) -> dict[str, float]:
    """state -> value of the replica's ray_fleetserve_front_ends gauge in one scrape."""
    return {s.labels["state"]: s.value for s in scrape(metrics).get("ray_fleetserve_front_ends", [])}


def _front_end_processes() -> list[psutil.Process]:
    """fleetserve's extra front-end processes under this app's replica (by the title they set)."""
    [replica] = replica_processes(APP)
    return [c for c in replica.children(recursive=True) if "fleetserve::FrontEnd" in " ".join(c.cmdline())]


def test_streams_are_served_by_both_front_end_processes(app):
    url, metrics, log_path = app
    before = _status()
    assert before["front_ends"] == 2 and before["alive"] == 2, before
    [child] = _front_end_processes()
    assert child.pid in before["pids"], (child.pid, before)

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*(_chat(c, stream=True, tokens=16) for _ in range(16)))

    results = asyncio.run(run())
    assert results == [(200, 16)] * 16, results
    after = _status()
    served = [a - b for a, b in zip(after["requests"], before["requests"])]
    print("streams per front end:", served)
    assert sum(served) == 16 and min(served) >= 4, served  # least-busy dispatch: both carry a share

    # Front end 1's engine steps reach front end 0's stat loggers: vLLM's histograms count all.
    sent = sum(after["requests"])

    def counted() -> bool:
        samples = scrape(metrics)
        got = [count_by_model(samples, f"ray_vllm_{m}").get("tiny-dense", 0)
               for m in ("e2e_request_latency_seconds", "time_to_first_token_seconds")]
        print("scraped counts:", got, "sent:", sent)
        return got == [sent, sent]

    wait_until(counted, timeout_s=60, interval_s=2, what="vLLM's request counts to equal the requests served")

    wait_until(lambda: _front_end_gauge(metrics) == {"configured": 2, "alive": 2}, timeout_s=30, interval_s=1,
               what="the front-end gauge to say 2 configured, 2 alive")

    # The request log (front end 0 writes it) has each stream's engine numbers, whichever front end served it.
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if '"/v1/chat/completions"' in x]
    assert len(lines) == 16 and all(x["output_tokens"] == 16 and x["prompt_tokens"] for x in lines), lines


def test_killing_a_front_end_process_loses_no_plain_request(app):
    url, metrics, _ = app
    [child] = _front_end_processes()
    before = _status()

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            tasks = [asyncio.create_task(_chat(c, stream=False, tokens=128)) for _ in range(12)]
            # Kill once front end 1 holds requests: the ones it was generating must be answered anyway.
            for _ in range(600):
                await asyncio.sleep(0.05)
                status = await asyncio.to_thread(_status)
                if status["requests"][1] - before["requests"][1] >= 2:
                    break
            os.kill(child.pid, signal.SIGKILL)
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert results == [(200, 128)] * 12, results
    wait_until(lambda: _status()["alive"] == 1, timeout_s=30, what="the pool to drop the killed front end")
    wait_until(lambda: _front_end_gauge(metrics) == {"configured": 2, "alive": 1}, timeout_s=30, interval_s=1,
               what="the front-end gauge to show the replica degraded")
    after = _status()
    print("after the kill:", after)
    assert after["resent"] - before["resent"] >= 1, after  # the kill did catch requests in flight on it
    assert child.pid not in after["alive_pids"]

    async def more():  # the replica serves on with front end 0 alone
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*(_chat(c, stream=s, tokens=8) for s in (True, False, True, False)))

    assert asyncio.run(more()) == [(200, 8)] * 4
