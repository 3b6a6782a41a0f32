"""End to end on the CPU: real Ray Serve, real vLLM engines on the tiny models, real HTTP.

One app for the module (router + tiny dense + tiny MoE + tiny dense with tensor parallel 2):
starting engines is the expensive part, so every test shares it.
"""

from __future__ import annotations

import json
import os

import httpx
import openai
import pytest
import ray
from ray import serve

from conftest import free_port
from cluster.ray_env import local_fast_path_env
from serve_app.app import build_application
from serve_app.config import parse_config

pytestmark = pytest.mark.slow

_ENGINE = {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 8}
_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
MAX_LEN = 512


def _model(name, source, **kw):
    return {"name": name, "source": source, "max_model_len": MAX_LEN, "engine_args": _ENGINE,
            "placement": {"accelerator": "CPU"}, "env": _ENV, **kw}


@pytest.fixture(scope="module")
def base_url():
    port = free_port()
    cfg = parse_config({
        "name": "e2e",
        "http": {"port": port},
        "models": [
            _model("tiny-dense", "tiny:dense"),
            _model("tiny-moe", "tiny:moe"),
            # TP=2 on the CPU: two mp workers inside the replica's 2-bundle placement group.
            _model("tiny-dense-tp2", "tiny:dense", parallelism={"tensor": 2}),
        ],
    })
    # The default fast path (HAProxy -> router replica's own port -> model replicas over gRPC):
    # Serve reads these env vars in the processes Ray starts next.
    saved = dict(os.environ)
    os.environ.update(local_fast_path_env(cfg))
    ray.init(address="local", num_cpus=6, namespace="serve")
    try:
        app = build_application(cfg)
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(app, name=cfg.name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_every_model(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {"tiny-dense", "tiny-moe", "tiny-dense-tp2"}


@pytest.mark.parametrize("model", ["tiny-dense", "tiny-moe"])
def test_streamed_chat_completion_through_the_openai_sdk(client, model):
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say something"}], max_tokens=12,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 12
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # streamed, not one blob
    assert text
    assert {c.model for c in chunks} == {model}


def test_non_streaming_completion(client):
    out = client.completions.create(model="tiny-moe", prompt="def main(", max_tokens=7, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 7
    assert out.choices[0].finish_reason == "length"
    assert out.model == "tiny-moe"


def test_tensor_parallel_2_returns_tokens(client):
    out = client.chat.completions.create(
        model="tiny-dense-tp2", messages=[{"role": "user", "content": "hi"}], max_tokens=9, extra_body={"ignore_eos": True}
    )
    assert out.usage.completion_tokens == 9
    assert out.choices[0].message.content


def test_tensor_parallel_2_replica_holds_a_two_bundle_group():
    tables = ray.util.placement_group_table().values()
    sizes = sorted(len(t["bundles"]) for t in tables if t["state"] == "CREATED")
    assert sizes == [1, 1, 2], sizes  # dense, moe, and the TP=2 replica


def _bad(base_url, body, path="/v1/chat/completions"):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(base_url + path, headers={"content-type": "application/json"}, timeout=60, **kw)


@pytest.mark.parametrize(
    "body, path, status, words",
    [
        (b"{not json", "/v1/chat/completions", 400, "not valid JSON"),
        (b"[1, 2]", "/v1/chat/completions", 400, "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions", 400, "model"),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions", 404, "does not exist"),
        ({"model": "tiny-dense"}, "/v1/chat/completions", 400, "messages"),
        ({"model": "tiny-dense", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "/v1/chat/completions", 400, "max_tokens"),
        ({"model": "tiny-dense", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, "/v1/chat/completions", 400, "max_tokens"),
        ({"model": "tiny-dense", "messages": [{"role": "user", "content": "x"}], "max_tokens": MAX_LEN + 1}, "/v1/chat/completions", 400, "max_model_len"),
        ({"model": "tiny-moe", "prompt": "def " * (2 * MAX_LEN), "max_tokens": 4}, "/v1/completions", 400, "context length"),
        ({"model": "tiny-moe", "prompt": "def " * (2 * MAX_LEN), "max_tokens": 4, "stream": True}, "/v1/completions", 400, "context length"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(base_url, client, body, path, status, words):
    r = _bad(base_url, body, path)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] or words == err.get("param"), err
    assert "Traceback" not in r.text
    ok = client.completions.create(model="tiny-dense", prompt="x", max_tokens=2)
    assert ok.usage.completion_tokens >= 1


def test_health(base_url):
    r = httpx.get(base_url + "/health", timeout=10)
    assert r.status_code == 200
    assert set(json.loads(r.text)["models"]) == {"tiny-dense", "tiny-moe", "tiny-dense-tp2"}


def test_the_http_port_is_served_by_haproxy_on_the_fast_path(base_url):
    import psutil

    port = int(base_url.rsplit(":", 1)[1])
    owners = {psutil.Process(c.pid).name() for c in psutil.net_connections("tcp")
              if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    assert owners == {"haproxy"}, owners


def test_haproxy_stats_and_metrics_listen_on_this_instances_own_ports(base_url):
    """Not on Serve's machine-wide defaults (8404, 9101), where a second Serve on the machine would collide."""
    import psutil

    wanted = {int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]), int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert wanted.isdisjoint({8404, 9101})
    listening = {c.laddr.port for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid and psutil.Process(c.pid).name() == "haproxy"}
    assert wanted <= listening, (wanted, listening)
