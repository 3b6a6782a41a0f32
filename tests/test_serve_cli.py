"""Ray's own CLI runs our entry points: `serve_app.config:app` and `serve_app.config:build_app`.

The SIMULATOR engine keeps these fast (no weights); what is under test is the wiring from the
CLI through our builder to a working HTTP app, API keys included, and that a bad config fails
with the field named before anything is deployed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port, wait_until

pytestmark = pytest.mark.slow

SERVE = str(Path(sys.executable).with_name("serve"))


def _config(**extra) -> dict:
    sim = {"engine": "sim", "source": "tiny:dense", "placement": {"accelerator": "CPU"}, "sim": {"startup_s": 0.5}}
    return {"name": "cli", "models": [{"name": "sim-a", **sim}, {"name": "sim-b", **sim}], **extra}


def _serve_run(serve_config: dict, tmp_path):
    # A Serve config file, so the HTTP port is a free one (an import path always gets 8000).
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(serve_config))
    # RAY_ADDRESS=local: a fresh Ray of this test's own, never another one on the machine.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.Popen([SERVE, "run", str(p)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(url, proc, headers=None):
    def ready():
        if proc.poll() is not None:
            pytest.fail("serve run exited early:\n" + proc.stdout.read()[-3000:])
        try:
            return httpx.get(url + "/v1/models", headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout_s=180, interval_s=1, what=f"{url} to serve")


def test_builder_from_a_serve_config_file_with_the_config_inline_and_api_keys(tmp_path):
    port = free_port()
    app = {"name": "cli", "route_prefix": "/", "import_path": "serve_app.config:build_app",
           "args": {"config": _config(api_keys=["s3cret"])}}  # what a RayService's serveConfigV2 carries
    proc = _serve_run({"http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Bearer s3cret"}
        _wait_ready(url, proc, headers=auth)
        body = {"model": "sim-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 401
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.post(url + "/v1/chat/completions", json=body, timeout=30, headers=auth)
        assert ok.status_code == 200 and ok.json()["model"] == "sim-b"
        ids = {m["id"] for m in httpx.get(url + "/v1/models", headers=auth, timeout=10).json()["data"]}
        assert ids == {"sim-a", "sim-b"}
    finally:
        _stop(proc)


def test_config_app_reads_fleetserve_config(tmp_path):
    port = free_port()
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(yaml.safe_dump(_config()))
    app = {"name": "cli", "route_prefix": "/", "import_path": "serve_app.config:app",
           "runtime_env": {"env_vars": {"FLEETSERVE_CONFIG": str(cfg)}}}
    proc = _serve_run({"http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        r = httpx.post(url + "/v1/completions", timeout=30, json={"model": "sim-a", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.headers["x-fleetserve-engine"] == "simulator"
    finally:
        _stop(proc)


def test_serve_run_with_a_bad_config_names_the_field_and_deploys_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "m", "source": "tiny:dense", "parallelism": {"tensor": 3}}]}))
    # The builder fails at config load, before Ray is touched or a port bound.
    out = subprocess.run([SERVE, "run", "serve_app.config:build_app", f"config={bad}"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "RAY_ADDRESS": "local"})
    assert out.returncode != 0
    assert "models[0].parallelism.tensor: tensor=3 does not divide num_attention_heads=4" in out.stdout + out.stderr
