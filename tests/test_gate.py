"""The HTTP gate and the engine guard as plain ASGI apps: auth on every route, limits, clean errors.

No Ray here: the live tests (test_trust_*.py) run the same classes inside Serve replicas.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from serve_app.schema import KeyLimits, ModelLimits, parse_config
from serve_app.ingress.gate import OPENAI_ROUTES, Gate, GateSpec
from serve_app.ingress.guard import RETRY_HEADER, EngineGuard
from serve_app.ingress.keys import KeyLimiter, KeySet


async def _ok(request: Request):
    await request.body()
    return JSONResponse({"ok": True, "path": request.url.path})


async def _boom(_: Request):
    raise RuntimeError("secret internal detail /etc/passwd")


async def _vllm_500(_: Request):
    return JSONResponse({"error": {"message": "Traceback ... internal"}}, status_code=500)


async def _stream_then_fail(_: Request):
    async def gen():
        yield b"data: {\"choices\": [{\"delta\": {\"content\": \"a\"}}]}\n\n"
        raise RuntimeError("engine died")
    return StreamingResponse(gen(), media_type="text/event-stream")


# An inner app that serves every OpenAI route plus some of vLLM's operational ones.
_INNER = Starlette(routes=[Route(p.replace("{model}", "{model}"), _ok, methods=["GET", "POST"]) for p in OPENAI_ROUTES]
                   + [Route(p, _ok, methods=["GET", "POST"]) for p in ("/invocations", "/load", "/scale_elastic_ep",
                                                                         "/start_profile", "/docs", "/openapi.json")])
VLLM_ONLY = ("/invocations", "/load", "/scale_elastic_ep", "/start_profile", "/docs", "/openapi.json")


def _gate(keys=("k1", "k2"), **spec_kw) -> Gate:
    spec = GateSpec(routes=dict(OPENAI_ROUTES), public=("/health",), inline_keys=tuple(keys), **spec_kw)
    return Gate(_INNER, spec)


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gate")


def _run(coro):
    return asyncio.run(coro)


def _is_openai_error(r: httpx.Response, status: int) -> bool:
    return (r.status_code == status and r.headers["content-type"] == "application/json"
            and r.json()["error"]["code"] == status)


def test_every_route_needs_a_valid_key_except_the_liveness_route():
    async def go():
        async with _client(_gate()) as c:
            for path in list(OPENAI_ROUTES) + list(VLLM_ONLY) + ["/nope", "/v1/../metrics"]:
                path = path.replace("{model}", "m")
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "k1"}, {"authorization": "Basic k1"}):
                    r = await c.post(path, headers=headers, json={}) if path != "/health" else await c.get(path, headers=headers)
                    if path == "/health":
                        assert r.status_code == 200
                    else:
                        assert _is_openai_error(r, 401), (path, headers, r.status_code)
                        assert r.headers["www-authenticate"] == "Bearer"
            r = await c.get("/v1/models", headers={"authorization": "Bearer k2"})
            assert r.status_code == 200 and r.json()["ok"]
    _run(go())


def test_with_a_key_only_the_allow_listed_routes_exist_and_wrong_methods_get_json_405():
    async def go():
        async with _client(_gate()) as c:
            auth = {"authorization": "Bearer k1"}
            for path in VLLM_ONLY:
                r = await c.post(path, headers=auth)
                assert _is_openai_error(r, 404), path
            r = await c.get("/v1/chat/completions", headers=auth)
            assert _is_openai_error(r, 405) and r.headers["allow"] == "POST"
            r = await c.request("DELETE", "/v1/models", headers=auth)
            assert _is_openai_error(r, 405)
    _run(go())


def test_opted_in_vllm_routes_exist_and_still_need_a_key():
    cfg = parse_config({"models": [{"name": "m", "source": "tiny:dense"}],
                        "api_keys": ["k1"], "http": {"routes": {"vllm": ["/invocations"]}}})
    gate = Gate(_INNER, GateSpec.from_config(cfg, routes=OPENAI_ROUTES))

    async def go():
        async with _client(gate) as c:
            assert _is_openai_error(await c.post("/invocations", json={}), 401)
            assert (await c.post("/invocations", json={}, headers={"authorization": "Bearer k1"})).status_code == 200
            assert _is_openai_error(await c.post("/load", headers={"authorization": "Bearer k1"}), 404)
    _run(go())


def test_restrict_to_drops_routes_the_app_does_not_serve():
    gate = _gate().restrict_to(["/health", "/v1/models"])
    assert set(gate.routes) == {"/health", "/v1/models"}


def test_no_keys_configured_means_open_routes_but_the_allow_list_still_holds():
    async def go():
        async with _client(_gate(keys=())) as c:
            assert (await c.get("/v1/models")).status_code == 200
            assert _is_openai_error(await c.post("/scale_elastic_ep"), 404)
    _run(go())


def test_body_limits_and_lone_surrogates_get_clean_4xx():
    async def go():
        async with _client(_gate(max_body_bytes=2048)) as c:
            auth = {"authorization": "Bearer k1", "content-type": "application/json"}
            r = await c.post("/v1/chat/completions", headers=auth, content=b"x" * 4096)
            assert _is_openai_error(r, 413)

            async def chunks():  # no content-length: counted while read
                for _ in range(10):
                    yield b"y" * 500
            r = await c.post("/v1/chat/completions", headers=auth, content=chunks())
            assert _is_openai_error(r, 413)
            r = await c.post("/v1/chat/completions", headers=auth, content=b'{"model": "\\ud800"}')
            assert _is_openai_error(r, 400) and "surrogate" in r.json()["error"]["message"]
            r = await c.post("/v1/chat/completions", headers=auth, content=b'{"model": "\\ud83d\\ude00"}')  # a valid pair
            assert r.status_code == 200
    _run(go())


def test_key_file_rotates_without_a_restart(tmp_path, monkeypatch):
    import serve_app.ingress.keys as keys

    f = tmp_path / "keys"
    f.write_text("# api keys\nold-key\n")
    ks = KeySet(file=str(f))
    assert ks.match("old-key") and not ks.match("new-key")
    f.write_text("new-key, other-key\n")
    ks._next_check = 0.0  # the next match re-checks the file (otherwise within _FILE_RECHECK_S)
    assert ks.match("new-key") and ks.match("other-key") and not ks.match("old-key")
    assert keys._FILE_RECHECK_S <= 10
    f.unlink()
    ks._next_check = 0.0
    assert ks.enabled and not ks.match("new-key")  # a missing file holds no keys: default-deny


def test_key_env_var_source(monkeypatch):
    monkeypatch.setenv("TEST_FLEETSERVE_KEYS", "a1,b2\nc3")
    ks = KeySet(env_var="TEST_FLEETSERVE_KEYS")
    assert all(ks.match(k) for k in ("a1", "b2", "c3")) and not ks.match("d4") and not ks.match(None)
    assert ks.match("a1") != ks.match("b2")  # ids tell keys apart without holding them
    assert "a1" not in ks.match("a1")


def test_key_limiter_concurrency_and_rate_with_time_passed_in():
    lim = KeyLimiter(KeyLimits(max_concurrent_requests=2))
    assert lim.acquire("a", 0).ok and lim.acquire("a", 0).ok
    v = lim.acquire("a", 0)
    assert not v.ok and "max_concurrent_requests" in v.reason
    assert lim.acquire("b", 0).ok  # another key is not affected
    lim.release("a")
    assert lim.acquire("a", 0).ok

    rate = KeyLimiter(KeyLimits(requests_per_s=2, burst=2))
    assert rate.acquire("a", 10.0).ok and rate.acquire("a", 10.0).ok
    v = rate.acquire("a", 10.0)
    assert not v.ok and v.retry_after_s == pytest.approx(0.5)
    assert rate.acquire("a", 10.5).ok  # one token back after 1/rate seconds


def test_per_key_rate_limit_answers_429_with_retry_after():
    async def go():
        async with _client(_gate(key_limits=KeyLimits(requests_per_s=0.1, burst=1))) as c:
            auth = {"authorization": "Bearer k1"}
            assert (await c.get("/v1/models", headers=auth)).status_code == 200
            r = await c.get("/v1/models", headers=auth)
            assert _is_openai_error(r, 429) and int(r.headers["retry-after"]) >= 1
            assert (await c.get("/v1/models", headers={"authorization": "Bearer k2"})).status_code == 200
    _run(go())


def test_per_key_limits_without_keys_are_refused_at_load():
    from serve_app.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "m", "source": "tiny:dense"}], "key_limits": {"requests_per_s": 5}})
    assert "key_limits" in str(e.value) and "api_keys" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "m", "source": "tiny:dense"}, {"name": "n", "source": "tiny:moe"}],
                      "http": {"routes": {"vllm": ["/invocations"]}}})
    assert "http.routes.vllm" in str(e.value)


def _guarded(alive=True, waiting=0, **limits) -> EngineGuard:
    inner = Starlette(routes=[Route("/v1/chat/completions", _ok, methods=["POST"]),
                              Route("/v1/completions", _stream_then_fail, methods=["POST"]),
                              Route("/v1/embeddings", _vllm_500, methods=["POST"]),
                              Route("/tokenize", _boom, methods=["POST"]),
                              Route("/v1/models", _ok, methods=["GET"])])
    state = {"alive": alive}
    g = EngineGuard(inner, model="m", alive=lambda: state["alive"], waiting_prompt_tokens=lambda: waiting,
                    limits=ModelLimits(**limits))
    g.state = state
    return g


def test_dead_engine_answers_retryable_503_on_generation_routes():
    g = _guarded(alive=False)

    async def go():
        async with _client(g) as c:
            r = await c.post("/v1/chat/completions", json={})
            assert _is_openai_error(r, 503) and r.headers[RETRY_HEADER] == "1" and r.headers["retry-after"] == "1"
            assert (await c.get("/v1/models")).status_code == 200  # no engine needed
            r = await c.post("/v1/embeddings", json={})  # a 500 of the app while the engine is dead: retryable
            assert _is_openai_error(r, 503) and r.headers[RETRY_HEADER] == "1"
    _run(go())
    assert g.shed == 2


def test_internal_errors_never_reach_the_client():
    g = _guarded()

    async def go():
        async with _client(g) as c:
            r = await c.post("/v1/embeddings", json={})
            assert _is_openai_error(r, 500) and "Traceback" not in r.text
            r = await c.post("/tokenize", json={})
            assert _is_openai_error(r, 500) and "secret" not in r.text and "passwd" not in r.text
    _run(go())


def test_a_stream_that_breaks_ends_with_an_sse_error_event_and_done():
    async def go():
        async with _client(_guarded()) as c:
            r = await c.post("/v1/completions", json={})
            assert r.status_code == 200
            events = [line for line in r.text.split("\n\n") if line]
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == 503
    _run(go())


def test_prefill_queue_bound_sheds_with_503_and_retry_after():
    async def go():
        async with _client(_guarded(waiting=5000, max_waiting_prompt_tokens=4096, retry_after_s=3)) as c:
            r = await c.post("/v1/chat/completions", json={})
            assert _is_openai_error(r, 503) and r.headers["retry-after"] == "3" and "capacity" in r.text
        async with _client(_guarded(waiting=100, max_waiting_prompt_tokens=4096)) as c:
            assert (await c.post("/v1/chat/completions", json={})).status_code == 200
    _run(go())


_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
_PATHS = st.one_of(st.sampled_from(list(OPENAI_ROUTES) + list(VLLM_ONLY)), st.text(max_size=30).map(lambda s: "/" + s))
_BODIES = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
                    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                                 max_leaves=10).map(lambda v: json.dumps(v).encode()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=_METHODS, path=_PATHS, body=_BODIES, key=st.sampled_from([None, "k1", "bad", ""]))
def test_any_request_gets_a_clean_answer_from_the_gate(method, path, body, key):
    from urllib.parse import quote

    headers = {"authorization": f"Bearer {key}"} if key is not None else {}

    async def go():
        async with _client(_gate(max_body_bytes=1024)) as c:
            return await c.request(method, quote(path, safe="/{}"), headers=headers, content=body)
    r = _run(go())
    assert r.status_code < 500
    if r.status_code >= 400 and method != "HEAD":  # a HEAD answer has headers only
        assert r.headers["content-type"] == "application/json" and "error" in r.json()
