"""Two fleetserve apps on one host (two `fleetserve serve`, two local Rays) never answer for each other.

The shipped fast path (direct ingress: HAProxy -> the replica's own HTTP port) once let a second
app's HAProxy forward to the first app's replica, whose port it assumed was its own. Both apps
here use that path with the SIMULATOR engine (no weights: what is under test is the ports and
the keys, not the model). Every answer either port gives, from the moment the second app starts
until both have served for a while, is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port, wait_until

pytestmark = pytest.mark.slow

FLEETSERVE = str(Path(sys.executable).with_name("fleetserve"))


def _start(name: str, key: str, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = {"name": name, "api_keys": [key], "http": {"host": "127.0.0.1", "port": port},
           "models": [{"name": f"{name}-model", "engine": "sim", "source": "tiny:dense",
                       "placement": {"accelerator": "CPU"}, "sim": {"startup_s": 0.5}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each starts a local Ray of its own
    # Output to a file: a pipe nobody reads would fill and block the app.
    out = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([FLEETSERVE, "serve", "-c", str(path)], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log = tmp_path / f"{name}.log"
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: fleetserve shuts its Serve app and Ray down
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _probe(url: str, key: str, model: str) -> tuple[int | None, str]:
    """One chat request; (status, model that answered) or (None, error) when nothing listens yet."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    try:
        r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    except httpx.HTTPError as e:
        return None, type(e).__name__
    return r.status_code, (r.json().get("model", "") if r.status_code == 200 else "")


def test_two_apps_on_one_host_never_answer_for_each_other(tmp_path):
    a, url_a = _start("iso-a", "sk-a", tmp_path)
    b = None
    try:
        wait_until(lambda: _probe(url_a, "sk-a", "iso-a-model")[0] == 200 or a.poll() is not None,
                   timeout_s=180, interval_s=1, what="app A to serve")
        assert a.poll() is None, a.log.read_text()[-3000:]
        b, url_b = _start("iso-b", "sk-b", tmp_path)
        seen: list[tuple[str, str, str, int | None, str]] = []
        b_served_at = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert b.poll() is None, b.log.read_text()[-3000:]
            # Each port with each app's key and each app's model: only (own key, own model) may succeed.
            for url, port_of in ((url_a, "a"), (url_b, "b")):
                for key_of in ("a", "b"):
                    for model_of in ("a", "b"):
                        status, answered = _probe(url, f"sk-{key_of}", f"iso-{model_of}-model")
                        seen.append((port_of, key_of, model_of, status, answered))
                        own = port_of == key_of == model_of
                        if not own:
                            assert status != 200, (f"port of {port_of} answered key {key_of}, model {model_of}: "
                                                   f"{answered}")
                        elif status == 200:
                            assert answered == f"iso-{port_of}-model", answered
            if b_served_at is None and _probe(url_b, "sk-b", "iso-b-model")[0] == 200:
                b_served_at = time.monotonic()
            if b_served_at is not None and time.monotonic() - b_served_at > 15:
                break
            time.sleep(0.2)
        assert b_served_at is not None, "app B never served"
        # A kept serving the whole time, and B's port refused A's key once it was up.
        assert all(s == 200 for p, k, m, s, _ in seen if p == k == m == "a")
        assert any(p == "b" and k == "a" and s == 401 for p, k, m, s, _ in seen)
        print(f"\nISOLATION: {len(seen)} probes, statuses by (port,key,model): "
              f"{sorted({(p, k, m, s) for p, k, m, s, _ in seen}, key=str)}")
    finally:
        for p in (b, a):
            if p is not None:
                _stop(p)
