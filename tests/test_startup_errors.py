"""Failures after the config loads reach the terminal: one short message, the model and the cause, exit 1.

The pure part reads Serve's status message (a real one, recorded from a failed replica);
the slow part runs `fleetserve serve` on a real local Ray with real vLLM for each way a
replica or its placement can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from serve_app.startup import failure_cause

DATA = Path(__file__).with_name("data")

CASES = [
    # (status message, cause, ours)
    ((DATA / "serve_status_engine_error.txt").read_text(),
     "EngineError: models[0].engine_args.enforce_eagre: vLLM has no such argument; did you mean one of ['enforce_eager']?", True),
    ("A replica failed to start with exception. Retrying 2 more time(s). Error:\nTraceback (most recent call last):\n"
     '  File "x.py", line 1, in f\n    raise ValueError("bad")\nValueError: max_num_seqs must be positive\n',
     "ValueError: max_num_seqs must be positive", False),
    ("Traceback (most recent call last):\n  File \"haproxy.py\", line 2107, in _reload_haproxy\n"
     "RuntimeError: HAProxy crashed during startup: [NOTICE]   (14081) : haproxy version is 2.8.25\n"
     "[WARNING]  (14081) : config : log format ignored\n[ALERT]    (14081) : Binding for proxy stats: cannot bind "
     "socket (Address already in use) for [0.0.0.0:44227]\n[ALERT]    (14081) : Some protocols failed to start!\n",
     "RuntimeError: HAProxy crashed during startup: Binding for proxy stats: cannot bind socket (Address already in "
     "use) for [0.0.0.0:44227] Some protocols failed to start!", False),
    ("Deploying: 1 replica starting.", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("message,cause,ours", CASES,
                         ids=["recorded-engine-error", "foreign-error", "haproxy-alerts", "no-error", "empty"])
def test_failure_cause_reads_the_replicas_exception(message, cause, ours):
    found = failure_cause(message)
    if cause is None:
        assert found is None
    else:
        assert (found.cause, found.ours) == (cause, ours)


def test_a_long_cause_is_cut():
    found = failure_cause("Traceback:\nValueError: " + "x" * 5000)
    assert found is not None and len(found.cause) < 600 and found.cause.endswith("...")


def _serve(tmp_path, model: dict, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    cfg = {"name": "failing", "http": {"host": "127.0.0.1", "port": free_port()},
           "models": [{"name": "tiny-dense", "source": "tiny:dense", "max_model_len": 512,
                       "placement": {"accelerator": "CPU", "schedule_timeout_s": 120},
                       "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, **model}]}
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("fleetserve")
    # timeout: a hang fails the test instead of blocking the suite; it is not a speed assertion.
    return subprocess.run([str(exe), "serve", "-c", str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": "", **(extra_env or {})})


def _error_lines(out: subprocess.CompletedProcess) -> list[str]:
    # Ray's own start-up lines go to stderr too; ours start with "error:" and follow it.
    err = out.stderr.splitlines()
    start = next((i for i, ln in enumerate(err) if ln.startswith("error:")), None)
    assert start is not None, out.stderr[-3000:]
    return err[start:]


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: "the hub is unreachable"


FAILING = {
    # A value vLLM itself refuses when the engine is created, inside the replica.
    "engine-value": ({"engine_args": {"max_num_seqs": 0}}, {}, ["'tiny-dense'", "max_num_seqs"]),
    # A typo in an engine argument's name (at load or in the replica, the message is the same).
    "engine-key": ({"engine_args": {"enforce_eagre": True}}, {}, ["enforce_eagre", "did you mean", "enforce_eager"]),
    # A hub id with no hub to fetch it from.
    "hub-unreachable": ({"source": "fleetserve-tests/not-cached"}, {"HF_ENDPOINT": None},
                        ["models[0].source", "fleetserve-tests/not-cached", "not in the local Hugging Face cache"]),
    # A GPU placement on a machine without GPUs: refused before the 120 s schedule timeout.
    "gpu-on-cpu": ({"placement": {"accelerator": "GPU", "schedule_timeout_s": 120}}, {},
                   ["'tiny-dense' cannot be placed", "no node has any GPU", "not retried"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FAILING))
def test_fleetserve_serve_ends_with_the_cause_and_exit_1(tmp_path, case):
    model, env, expected = FAILING[case]
    env = {k: (v if v is not None else _closed_port_url()) for k, v in env.items()}
    out = _serve(tmp_path, model, env)
    assert out.returncode in (1, 2), out.stderr[-3000:]  # 2 when the config check already catches it
    lines = _error_lines(out)
    text = "\n".join(lines)
    for part in expected:
        assert part in text, text
    assert len(lines) <= 3, text  # a message, not a traceback
    assert "Traceback" not in out.stderr + out.stdout
