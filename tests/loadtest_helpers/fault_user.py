"""A Locust user for fault tests: half streamed, half plain chat requests, each outcome logged as JSONL.

Run by tests/test_trust_direct.py as `locust -f` in its own process (locust gevent-patches its
importer). Env: FAULT_LOG (output file), FAULT_MODEL, FAULT_KEY, FAULT_TIMEOUT_S. Each line says
what the client saw, so the test can tell "completed", "ended with an SSE error event" and "cut
silently" apart, which Locust's own stats do not.
"""

from __future__ import annotations

import itertools
import json
import os
import time

from locust import HttpUser, constant, task

_LOG = open(os.environ["FAULT_LOG"], "a", buffering=1)
_COUNTER = itertools.count()


class FaultUser(HttpUser):
    wait_time = constant(0.05)

    @task
    def chat(self) -> None:
        i = next(_COUNTER)
        stream = i % 2 == 0
        body = {"model": os.environ["FAULT_MODEL"], "max_tokens": 24, "ignore_eos": True, "stream": stream,
                "messages": [{"role": "user", "content": f"request {i}: tell me about ports"}]}
        headers = {"Authorization": f"Bearer {os.environ['FAULT_KEY']}"}
        timeout = float(os.environ.get("FAULT_TIMEOUT_S", "60"))
        rec = {"i": i, "stream": stream, "start": time.time(), "status": None, "error_event": False, "done": False,
               "tokens": 0, "exception": None}
        try:
            with self.client.post("/v1/chat/completions", json=body, headers=headers, stream=stream, timeout=timeout,
                                  catch_response=True, name="stream" if stream else "plain") as resp:
                rec["status"] = resp.status_code
                if stream and resp.status_code == 200:
                    for line in resp.iter_lines(chunk_size=None):
                        if not line.startswith(b"data: "):
                            continue
                        data = line[6:]
                        if data == b"[DONE]":
                            rec["done"] = True
                            continue
                        event = json.loads(data)
                        if "error" in event:
                            rec["error_event"] = True
                        elif event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                            rec["tokens"] += 1
                elif resp.status_code == 200:
                    rec["tokens"] = resp.json()["usage"]["completion_tokens"]
                    rec["done"] = True
                else:
                    rec["body"] = resp.text[:200]
                ok = resp.status_code == 200 and rec["done"] and not rec["error_event"]
                resp.success() if ok else resp.failure(f"status {resp.status_code} done={rec['done']}")
        except Exception as e:  # a cut connection or a timeout: what the test must never see
            rec["exception"] = f"{type(e).__name__}: {e}"[:200]
        rec["end"] = time.time()
        _LOG.write(json.dumps(rec) + "\n")
