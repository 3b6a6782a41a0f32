"""Per-process state of a locust process running a plan: workload, clock origin, totals, request log.

No locust import: the locustfile creates one `ProcessRuntime` per process at test start and
attaches it to the Environment; users read it; the request-event listener calls `add_event`.
Files written into `out_dir` (when set), one set per load-generating process (`proc` =
local, or worker-0, worker-1, ...; the master generates no load):
- requests-<proc>.jsonl: one line per request (see `loadtest.results.RequestRecord`).
- process-<proc>.json: totals of every request event this process fired (the workers'
  own count, against which the master's merged stats are checked).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import IO

from loadtest.plan import LoadPlan
from loadtest.workload import Workload

__all__ = ["ProcessRuntime"]


class ProcessRuntime:
    """One process's share of the plan, started at (`t0_mono`, `t0_unix`)."""

    def __init__(self, plan: LoadPlan, *, proc: str, index: int, count: int, out_dir: str | Path | None,
                 t0_mono: float, t0_unix: float, headers: dict[str, str] | None = None):
        self.plan, self.proc, self.index, self.count = plan, proc, index, count
        self.headers = dict(headers or {})
        """Extra HTTP headers of every request (Authorization when an API key is set)."""
        self.t0_mono, self.t0_unix = t0_mono, t0_unix
        self.workload = Workload(plan, index=index, count=count)
        self.out_dir = Path(out_dir) if out_dir else None
        # (request_type, name) -> [count, failures, sum of response_length]
        self.totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        self._log: IO[str] | None = None
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.out_dir / f"requests-{proc}.jsonl", "w", buffering=1 << 16)

    def elapsed(self, now_mono: float) -> float:
        """Seconds since this process's test start."""
        return now_mono - self.t0_mono

    def add_event(self, request_type: str, name: str, response_length: int | None, failed: bool) -> None:
        """Add one request event to this process's totals."""
        t = self.totals[(request_type, name)]
        t[0] += 1
        t[1] += int(failed)
        t[2] += int(response_length or 0)

    def log_request(self, record: dict) -> None:
        """Append one request record to requests-<proc>.jsonl (no-op without out_dir)."""
        if self._log is not None:
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Flush the request log and write process-<proc>.json."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.out_dir:
            events = [{"model": k[0], "metric": k[1], "count": v[0], "failures": v[1], "response_length_sum": v[2]}
                      for k, v in sorted(self.totals.items())]
            doc = {"proc": self.proc, "index": self.index, "count": self.count, "t0_unix_s": self.t0_unix,
                   "arrivals_claimed": self.workload.arrivals_claimed,
                   "events": events}
            (self.out_dir / f"process-{self.proc}.json").write_text(json.dumps(doc, indent=1) + "\n")
