"""Shared pieces of the trust tests: a live app fixture body, process finders, a Locust fault run, hostile requests.

Everything here drives real components: Ray Serve with vLLM on the tiny model, HAProxy, Locust
in its own process, httpx over loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from hypothesis import strategies as st

from conftest import REPO, free_port, wait_until

KEY = "sk-trust-inline"
FILE_KEY = "sk-trust-file"
ENGINE_ARGS = {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 8}
# Multiprocessing on: the engine core is its own process, which the fault test kills.
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}


def model(name: str = "tiny-dense", **kw) -> dict:
    return {"name": name, "source": "tiny:dense", "max_model_len": 512, "engine_args": ENGINE_ARGS,
            "placement": {"accelerator": "CPU"}, "env": ENV, **kw}


@contextmanager
def live_app(config_dict: dict):
    """Start a fresh local Ray with fleetserve's environment, deploy `config_dict`, yield (config, base URL)."""
    import ray
    from ray import serve

    from cluster.ray_cluster import ensure_ray
    from serve_app.app import build_application
    from serve_app.schema import parse_config

    port = free_port()
    cfg = parse_config({**config_dict, "http": {**config_dict.get("http", {}), "port": port}})
    saved = dict(os.environ)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        ensure_ray(cfg)
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(build_application(cfg), name=cfg.name, route_prefix="/")
        yield cfg, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def vllm_routes() -> list[tuple[str, str]]:
    """Every (path, method) vLLM's OpenAI app registers for the tiny model: what fleetserve must guard."""
    from vllm.entrypoints.launchers.app import build_app

    from serve_app.schema import Parallelism, parse_config
    from serve_app.engines.vllm_engine import build_vllm_args
    from serve_app.tiny_models import ensure_tiny_model

    cfg = parse_config({"models": [model()]})
    args = build_vllm_args(cfg.models[0], model_dir=str(ensure_tiny_model("dense")), parallelism=Parallelism(),
                           executor="mp")
    args.disable_fastapi_docs = False  # list /docs and /openapi.json too: they must be refused all the same
    app = build_app(args, ("generate",), None)
    out = set()
    for r in app.routes:
        for m in (getattr(r, "methods", None) or {"GET"}):
            out.add((r.path.replace("{response_id}", "resp-1"), m))
    return sorted(out)


def replica_processes(app_name: str) -> list[psutil.Process]:
    """The Serve replica processes of `app_name` started by this test's Ray (found by their process title)."""
    me = psutil.Process()
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if f"ServeReplica:{app_name}:model-" in cmd and p.pid != me.pid:
            found.append(p)
    return found


def engine_core_of(replica: psutil.Process) -> psutil.Process:
    """The vLLM engine-core process under a replica."""
    for child in replica.children(recursive=True):
        cmd = " ".join(child.cmdline())
        if "EngineCore" in cmd or "EngineCore" in child.name():
            return child
    raise AssertionError(f"no engine-core process under replica {replica.pid}: "
                         f"{[c.name() for c in replica.children(recursive=True)]}")


def running_replicas(app_name: str, deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return 0
    return app.deployments[deployment].replica_states.get("RUNNING", 0)


@contextmanager
def locust_fault_load(base_url: str, *, model_name: str, key: str, users: int, log: Path):
    """Run the fault user (tests/loadtest_helpers/fault_user.py) under real Locust until the block ends."""
    env = {**os.environ, "FAULT_LOG": str(log), "FAULT_MODEL": model_name, "FAULT_KEY": key, "FAULT_TIMEOUT_S": "90"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(REPO / "tests/loadtest_helpers/fault_user.py"), "--headless",
         "-u", str(users), "-r", str(users), "-t", "600s", "--host", base_url, "--stop-timeout", "90", "--only-summary",
         "--loglevel", "WARNING"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 10, timeout_s=120, what="first requests")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # Locust stops spawning and lets running requests finish (--stop-timeout)
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_engine_then_replica(app_name: str, deployment: str, replicas: int) -> dict:
    """Under load already running: SIGKILL one replica's engine core, wait until Serve has replaced that
    replica and the fleet is whole, then SIGKILL a whole replica process and wait again.

    Returns the seconds each recovery took and the wall-clock time of the replica kill (to tell
    the requests that were in flight on the killed process apart).
    """
    def recovered_after(since: float) -> float:
        wait_until(lambda: running_replicas(app_name, deployment) == replicas
                   and len(replica_processes(app_name)) == replicas,
                   timeout_s=180, interval_s=0.5, what=f"the fleet back at {replicas} running replicas")
        return time.monotonic() - since

    time.sleep(5)  # steady load first
    victim = replica_processes(app_name)[0]
    engine_core_of(victim).kill()  # the engine core dies, the replica process lives on
    t0 = time.monotonic()
    wait_until(lambda: not victim.is_running() or victim.status() == "zombie", timeout_s=120,
               what="Serve replacing the replica whose engine died")
    engine_s = recovered_after(t0)
    time.sleep(5)
    other = replica_processes(app_name)[0]
    replica_killed_at = time.time()
    other.kill()  # a whole replica actor
    replica_s = recovered_after(time.monotonic())
    time.sleep(5)
    return {"engine_death_recovery_s": round(engine_s, 1), "replica_death_recovery_s": round(replica_s, 1),
            "replica_killed_at": replica_killed_at}


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def fault_summary(records: list[dict]) -> dict:
    """What the clients of a fault run saw: plain requests lost, streams completed / ended with an error event / cut."""
    plain = [r for r in records if not r["stream"]]
    streams = [r for r in records if r["stream"]]
    completed = [r for r in streams if r["status"] == 200 and r["done"] and not r["error_event"]]
    error_event = [r for r in streams if r["error_event"] and r["done"]]
    return {
        "sent": len(records), "plain": len(plain),
        "plain_lost": [r for r in plain if r["status"] != 200 or not r["done"]],
        "streams": len(streams), "streams_completed": len(completed), "streams_error_event": len(error_event),
        # Refused before the first byte with a JSON status (e.g. 503 while no replica was up): a clean answer.
        "streams_refused": [r for r in streams if r["status"] not in (200, None)],
        "streams_cut": [r for r in streams if r["status"] == 200 and r not in completed and r not in error_event]
                       + [r for r in streams if r["status"] is None],
        "longest_request_s": round(max(r["end"] - r["start"] for r in records), 1),
    }


def counts(summary: dict) -> dict:
    """The summary with lists replaced by their lengths, for printing and BENCHMARKS.md."""
    return {k: len(v) if isinstance(v, list) else v for k, v in summary.items()}


# ---- hostile requests ----------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=6)
_HOSTILE_TEXT = st.one_of(st.text(max_size=16), st.sampled_from(["\ud800", "\udfff", "\x00", "é" * 40, "'; DROP", "{{x}}"]))


@st.composite
def hostile_chat_body(draw, model_name: str) -> bytes:
    """A chat or completion body with 0-3 hostile mutations, or raw bytes; max_tokens kept small when valid."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    body = {"model": model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": draw(st.integers(1, 4))}
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["replace", "drop", "add", "message"]))
        key = draw(st.sampled_from(["model", "messages", "max_tokens", "temperature", "top_p", "n", "stream", "stop",
                                    "logprobs", "stream_options", "tools", "response_format", "seed", "prompt"]))
        if op == "replace":
            body[key] = draw(st.one_of(_JSON, _HOSTILE_TEXT))
        elif op == "drop" and key != "max_tokens":
            body.pop(key, None)
        elif op == "add":
            body[draw(st.text(max_size=10))] = draw(_JSON)
        else:
            body["messages"] = [{"role": draw(st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]),
                                                        _HOSTILE_TEXT)),
                                 "content": draw(st.one_of(_HOSTILE_TEXT, _JSON))}]
    if isinstance(body.get("max_tokens"), int) and 0 < body["max_tokens"] < 2**20:
        body["max_tokens"] = min(body["max_tokens"], 4)  # valid requests stay short; hostile ones stay hostile
    if isinstance(body.get("n"), int) and body["n"] > 4:
        body["n"] = 4
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


HOSTILE_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/health",
                 "/invocations", "/scale_elastic_ep", "/v1/../v1/models", "/%00", "/v1/chat/completions/", "/docs"]
# Printable values without spaces: httpx itself refuses a value with surrounding whitespace, so
# such a request would never leave the client. "\x7f" does leave it and meets uvicorn's parser.
HOSTILE_HEADERS = st.fixed_dictionaries({}, optional={
    "content-type": st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x", "\x7f"]),
    "x-request-id": st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    "accept": st.sampled_from(["*/*", "text/event-stream", "application/xml"]),
    "authorization-extra": st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
})


def send_hostile(base_url: str, data, *, methods: list[str], auths: list[dict], secrets: tuple[str, ...],
                 seen: dict) -> None:
    """Draw one hostile request, send it, and check the answer: no 5xx, JSON errors on /v1/, no secret echoed."""
    method = data.draw(st.sampled_from(methods))
    path = data.draw(st.sampled_from(HOSTILE_PATHS))
    headers = {**data.draw(HOSTILE_HEADERS), **data.draw(st.sampled_from(auths))}
    body = data.draw(hostile_chat_body("tiny-dense"))
    with httpx.Client(base_url=base_url, timeout=60) as c:
        r = c.request(method, path, content=body, headers=headers)
    seen["n"] += 1
    seen["statuses"][r.status_code] = seen["statuses"].get(r.status_code, 0) + 1
    assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text[:300])
    # A header value the HTTP parser refuses (e.g. a control character) never reaches the app:
    # uvicorn answers its own plain 400, which carries nothing internal. Everything else is JSON.
    parser_refusal = r.status_code == 400 and r.text == "Invalid HTTP request received."
    if r.status_code >= 400 and path.startswith("/v1/") and not parser_refusal:
        assert r.headers["content-type"].startswith("application/json"), (path, r.status_code, r.text[:200])
        assert "Traceback" not in r.text and not any(k in r.text for k in secrets)
