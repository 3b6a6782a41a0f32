"""Trust, router ingress (HTTP front -> Router deployment -> model replicas), on real Serve + vLLM.

One app for the module: tiny dense behind the router, 2 replicas taking 4 requests each with 4
more allowed to queue. Every route of the router needs a key; hostile input gets no 5xx;
overload past the bound is shed with 503 + Retry-After while admitted requests complete and the
replicas' memory stays flat; killing an engine core and then a replica under Locust load loses
no plain request and ends every stream with its tokens or an SSE error event.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trust_helpers import (KEY, counts, fault_summary, kill_engine_then_replica, live_app, locust_fault_load, model,
                           read_log, replica_processes, running_replicas, send_hostile)

pytestmark = pytest.mark.slow

APP = "trust-router"
DEPLOYMENT = "model-tiny-dense"
ONGOING, QUEUED = 4, 4


@pytest.fixture(scope="module")
def app():
    cfg = {"name": APP, "api_keys": [KEY], "http": {"ingress": "router"},
           "models": [model(autoscaling={"min_replicas": 2, "max_replicas": 2}, health_check_period_s=1,
                            max_ongoing_requests=ONGOING, limits={"max_queued_requests": QUEUED, "retry_after_s": 2})]}
    with live_app(cfg) as (config, url):
        yield url


def _auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def _router_routes() -> list[tuple[str, str]]:
    """Every (path, method) the router's own app registers, read from the app itself."""
    from serve_app.ingress.router import _build_app

    app = _build_app(SimpleNamespace(handles={}))
    return sorted({(r.path.replace("{model}", "tiny-dense"), m) for r in app.routes for m in r.methods})


def test_every_router_route_needs_a_valid_key_but_health(app):
    routes = _router_routes()
    assert ("/v1/chat/completions", "POST") in routes and ("/-/autoscaler/tiny-dense", "GET") in routes
    chat = {"model": "tiny-dense", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(base_url=app, timeout=60) as c:
        for path, method in routes + [("/invocations", "POST"), ("/metrics", "GET"), ("/docs", "GET")]:
            for headers in ({}, _auth("sk-wrong")):
                r = c.request(method, path, json=chat, headers=headers)
                if path == "/health":  # public; HEAD is not a route of ours (Starlette lists it beside GET)
                    assert r.status_code == (200 if method == "GET" else 405), (method, r.status_code)
                    continue
                assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
                if method != "HEAD":
                    assert r.json()["error"]["type"] == "AuthenticationError"
        assert c.post("/v1/chat/completions", json=chat, headers=_auth()).status_code == 200
        r = c.post("/v1/chat/completions", json={**chat, "model": "nope"}, headers=_auth())
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


_SEEN = {"n": 0, "statuses": {}}


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_requests_through_the_router_get_no_5xx(app, data):
    send_hostile(app, data, methods=["POST"] * 6 + ["GET", "PUT", "DELETE"], auths=[_auth(), _auth(), {}],
                 secrets=(KEY,), seen=_SEEN)


def _fleet_rss_mib() -> float:
    """Resident memory of the model replicas and everything under them (engine cores), MiB."""
    total = 0
    for p in replica_processes(APP):
        for q in [p, *p.children(recursive=True)]:
            try:
                total += q.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total / 2**20


async def _burst(base: str, n: int) -> list[tuple[int, dict, dict]]:
    body = {"model": "tiny-dense", "messages": [{"role": "user", "content": "count"}], "max_tokens": 32,
            "ignore_eos": True}
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        async def one():
            r = await c.post("/v1/chat/completions", json=body, headers=_auth())
            return r.status_code, dict(r.headers), r.json()
        return await asyncio.gather(*(one() for _ in range(n)))


def test_overload_is_shed_with_503_and_retry_after_while_admitted_requests_complete(app):
    assert _SEEN["n"] >= 300, _SEEN  # the hostile run above happened and the app still serves:
    n = 40  # 10x what the fleet holds: 2 replicas x 4 ongoing + 4 queued at the router's handle
    asyncio.run(_burst(app, n))  # warm-up: the first burst touches the KV cache's pages
    before = _fleet_rss_mib()
    results = [res for _ in range(3) for res in asyncio.run(_burst(app, n))]
    after = _fleet_rss_mib()
    ok = [body for status, _, body in results if status == 200]
    shed = [(h, body) for status, h, body in results if status == 503]
    print(f"\nOVERLOAD router: {len(results)} sent, {len(ok)} completed, {len(shed)} shed, "
          f"other {sorted({s for s, _, _ in results} - {200, 503})}, fleet RSS {before:.0f} -> {after:.0f} MiB")
    assert len(ok) + len(shed) == len(results)
    assert shed and ok
    assert all(b["usage"]["completion_tokens"] == 32 for b in ok)
    for headers, body in shed:
        assert headers["retry-after"] == "2" and body["error"]["type"] == "ServiceUnavailableError"
    assert after < before * 1.10 + 64, (before, after)  # shedding keeps no state per refused request


def test_engine_death_then_replica_death_under_locust_load_end_every_request_cleanly(app, tmp_path):
    log = tmp_path / "requests.jsonl"
    with locust_fault_load(app, model_name="tiny-dense", key=KEY, users=4, log=log):
        fault = kill_engine_then_replica(APP, DEPLOYMENT, replicas=2)
    s = fault_summary(read_log(log))
    fault.pop("replica_killed_at")
    print("\nFAULT router:", json.dumps({**counts(s), **fault}))
    assert s["plain"] > 30 and not s["plain_lost"], s["plain_lost"][:5]
    # The router holds the client's connection, so a stream whose replica died mid-way ends with
    # an SSE error event and [DONE]: nothing is cut silently, nothing is refused.
    assert not s["streams_cut"] and not s["streams_refused"], (s["streams_cut"] + s["streams_refused"])[:5]
    assert s["streams_completed"] > 30
    assert s["longest_request_s"] < 90
    assert running_replicas(APP, DEPLOYMENT) == 2
