"""Trust, direct ingress (one model: HAProxy -> the model replicas' own HTTP ports), on real Serve + vLLM.

One app for the module: tiny dense, 2 replicas, engine core in its own process, API keys
inline and from a file. Every vLLM route needs a key; 1,000 generated hostile requests get no
5xx; killing an engine core and then a replica under Locust load loses no plain request.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trust_helpers import (FILE_KEY, KEY, counts, fault_summary, kill_engine_then_replica, live_app, locust_fault_load,
                           model, read_log, running_replicas, send_hostile, vllm_routes)

pytestmark = pytest.mark.slow

APP = "trust-direct"
DEPLOYMENT = "model-tiny-dense"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(f"# mounted Secret\n{FILE_KEY}\n")
    cfg = {"name": APP, "api_keys": [KEY], "api_keys_file": str(key_file),
           "models": [model(autoscaling={"min_replicas": 2, "max_replicas": 2}, health_check_period_s=1)]}
    with live_app(cfg) as (config, url):
        yield url


def _auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def test_every_route_vllm_registers_needs_a_valid_key_but_health(app):
    routes = vllm_routes()
    assert len(routes) > 20 and ("/invocations", "POST") in routes and ("/scale_elastic_ep", "POST") in routes
    chat = {"model": "tiny-dense", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(base_url=app, timeout=60) as c:
        for path, method in routes + [("/-/autoscaler/tiny-dense", "GET")]:
            for headers in ({}, _auth("sk-wrong")):
                r = c.request(method, path, json=chat, headers=headers)
                if path == "/health":
                    assert r.status_code == 200
                    continue
                assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
                if method != "HEAD":  # a HEAD answer has no body
                    assert r.json()["error"]["type"] == "AuthenticationError"
        # With a key: the OpenAI surface answers, vLLM's operational routes do not exist.
        assert c.post("/v1/chat/completions", json=chat, headers=_auth()).status_code == 200
        assert c.post("/v1/chat/completions", json=chat, headers=_auth(FILE_KEY)).status_code == 200
        assert c.get("/-/autoscaler/tiny-dense", headers=_auth()).status_code == 200
        for path in ("/invocations", "/scale_elastic_ep", "/load", "/docs", "/openapi.json", "/v1/messages"):
            r = c.post(path, json=chat, headers=_auth())
            assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError", path
        r = c.get("/v1/chat/completions", headers=_auth())
        assert r.status_code == 405 and r.headers["content-type"] == "application/json"


_SEEN = {"n": 0, "statuses": {}}


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_thousand_hostile_requests_get_no_5xx_and_json_errors(app, data):
    send_hostile(app, data, methods=["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"],
                 auths=[_auth(), _auth(), {}, _auth("x")], secrets=(KEY, FILE_KEY), seen=_SEEN)


def test_the_app_still_serves_after_the_hostile_requests(app):
    assert _SEEN["n"] >= 1000, _SEEN
    print(f"\nhostile requests: {_SEEN['n']}, statuses {dict(sorted(_SEEN['statuses'].items()))}")
    with httpx.Client(base_url=app, timeout=60) as c:
        r = c.post("/v1/chat/completions", headers=_auth(),
                   json={"model": "tiny-dense", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_engine_death_then_replica_death_under_locust_load_lose_only_what_was_in_flight_on_the_killed_replica(app, tmp_path):
    log = tmp_path / "requests.jsonl"
    with locust_fault_load(app, model_name="tiny-dense", key=KEY, users=8, log=log):
        fault = kill_engine_then_replica(APP, DEPLOYMENT, replicas=2)
    s = fault_summary(read_log(log))
    replica_killed_at = fault.pop("replica_killed_at")
    print("\nFAULT direct:", json.dumps({**counts(s), **fault}))
    assert s["plain"] > 50
    # Direct mode is not loss-free (router mode is: tests/test_trust_router.py). Two kinds of
    # failure remain, both bounded and both counted in BENCHMARKS.md:
    # - a plain request in flight on the SIGKILLed replica process may get its connection closed
    #   (seen: 2 of ~1,650-1,850 per run; a standalone HAProxy with Serve's options retries these,
    #   the one inside Serve, reloading as the replica leaves, did not);
    # - a request that meets the dead engine may get its retryable JSON 503 when HAProxy's retry
    #   found no other server in time (seen: 0-2 per run; 17 before the 503 was held).
    def retryable_503(r):
        return r["status"] == 503 and "ServiceUnavailableError" in r.get("body", "")

    def in_flight_at_kill(r):
        return r["start"] <= replica_killed_at + 0.5 and r["end"] < replica_killed_at + 5

    lost = s["plain_lost"] + s["streams_refused"]
    assert all(retryable_503(r) or in_flight_at_kill(r) for r in lost), lost[:5]
    assert len(lost) <= 8, lost[:5]  # at most one per Locust user
    # A stream cut after its first byte can only be one that was on the SIGKILLed process: the
    # process holding the connection is gone and HAProxy cannot write an SSE error event.
    # Its 200 and headers went out, perhaps no token yet (CI saw one cut with 0 tokens beside one with 7).
    assert all(r["status"] == 200 and in_flight_at_kill(r) for r in s["streams_cut"]), s["streams_cut"][:5]
    assert s["streams_completed"] > 50
    assert s["longest_request_s"] < 90  # nobody waited past the client's timeout
    assert running_replicas(APP, DEPLOYMENT) == 2
