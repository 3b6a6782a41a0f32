"""The README's main command: `fleetserve serve` deploys, prints where to send requests and scrape metrics, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import REPO, free_port, wait_until

pytestmark = pytest.mark.slow


def _descendant_cmdlines(pid: int) -> list[str]:
    import psutil

    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out.append(" ".join(child.cmdline()))
        except psutil.Error:  # exited between listing and reading
            pass
    return out


def test_fleetserve_serve_prints_the_url_answers_and_stops_cleanly(tmp_path):
    default = yaml.safe_load((REPO / "serve_app/schema/default.yaml").read_text())
    default["http"]["port"] = free_port()
    default["models"] = default["models"][:1]  # one engine is enough to prove the command
    default["models"][0]["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(yaml.safe_dump(default))
    exe = Path(sys.executable).with_name("fleetserve")
    proc = subprocess.Popen([str(exe), "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    lines = []
    try:
        url = None
        for line in proc.stdout:  # ends when the process exits; pytest-timeout bounds a hang
            lines.append(line)
            m = re.search(r"is serving .* at (http://\S+)/v1", line)
            if m:
                url = m.group(1)
                break
        assert url, "".join(lines[-40:])
        metrics = None
        for line in proc.stdout:  # the metrics line follows the URL, before "Ctrl-C to stop."
            lines.append(line)
            if m := re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)$", line.strip()):
                metrics = m.group(1)
            if "Ctrl-C to stop" in line:
                break
        assert metrics, "".join(lines[-10:])
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tiny-dense", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        # The printed endpoint is the node's Ray metrics export port: the request's TTFT is there
        # once the replica's next report reaches Ray's agent.
        wait_until(lambda: "ray_vllm_time_to_first_token_seconds_count" in httpx.get(metrics, timeout=10).text,
                   timeout_s=60, what=f"vLLM's TTFT histogram at {metrics}")
        # The Ray it started runs without the dashboard (local_ray.dashboard defaults to false): a
        # full dashboard forks one "ray-dashboard-<Module>" process per module.
        tree = _descendant_cmdlines(proc.pid)
        assert any("raylet" in c for c in tree), tree  # the tree is Ray's: the next check is not vacuous
        assert not [c for c in tree if "ray-dashboard-" in c]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0
