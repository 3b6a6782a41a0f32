"""Open-loop arrival schedules: seeded Poisson times, trace files, and each process's share.

Pure: no locust, no clock. Times are offsets in seconds from the start of the test.

How open-loop load is delivered (the mechanism, in one place):
1. One global schedule is drawn from the plan's seed: Poisson inter-arrival gaps
   ~ Exp(rate_rps), or a trace's timestamps. It is the same for any number of workers.
2. Arrival i belongs to process i mod N (N = 1 locally, else the number of workers). The
   processes together send exactly the global schedule, so the total rate is rate_rps
   whatever N is (each worker carries rate_rps / N).
3. In each process, users pull the next arrival of that process's share from an
   `ArrivalCursor`, sleep until its time and send it. The clock is read by the caller.
   If every user is busy, the arrival is sent late and the lag is reported; the schedule
   never slips, so the rate only falls short when there are too few users.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from loadtest.errors import LoadTestError
from loadtest.jsonl import read_jsonl

__all__ = ["poisson_times", "TraceRow", "load_trace", "ArrivalCursor"]


def poisson_times(rate_rps: float, seed: int) -> Iterator[float]:
    """Yield increasing arrival times (s) of a Poisson process with mean rate `rate_rps`, forever."""
    if not (rate_rps > 0 and math.isfinite(rate_rps)):
        raise LoadTestError(f"rate_rps={rate_rps!r} must be a positive number of requests per second")
    rng = random.Random(f"{seed}:arrivals")
    t = 0.0
    while True:
        t += rng.expovariate(rate_rps)
        yield t


@dataclass(frozen=True)
class TraceRow:
    """One trace arrival: when (s from the trace's first arrival) and, optionally, what."""

    t_s: float
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None


def load_trace(path: str | Path, *, time_scale: float = 1.0) -> tuple[TraceRow, ...]:
    """Read a JSONL trace, sorted by time and shifted so the first arrival is at 0, divided by `time_scale`.

    Each line has `t_s` (seconds) or `start_unix_s` (epoch seconds; a results request log
    replays as is), and optionally `input_tokens`, `output_tokens`, `model`. Raises
    LoadTestError naming the file, the line and the fix.
    """
    p = Path(path).expanduser()
    rows: list[TraceRow] = []
    for n, obj in read_jsonl(p, what="trace"):
        try:
            t = obj["t_s"] if "t_s" in obj else obj["start_unix_s"]
            row = TraceRow(float(t), _opt_int(obj.get("input_tokens")), _opt_int(obj.get("output_tokens")),
                           obj.get("model"))
        except (KeyError, TypeError, ValueError) as e:
            raise LoadTestError(f"trace {p} line {n}: {type(e).__name__}: {e}; each line needs t_s or "
                                f"start_unix_s, and positive integer token counts") from None
        if not math.isfinite(row.t_s):
            raise LoadTestError(f"trace {p} line {n}: time {row.t_s!r} is not a finite number")
        rows.append(row)
    if not rows:
        raise LoadTestError(f"trace {p} has no arrivals; add JSONL lines with t_s")
    rows.sort(key=lambda r: r.t_s)
    t0 = rows[0].t_s
    return tuple(TraceRow((r.t_s - t0) / time_scale, r.input_tokens, r.output_tokens, r.model) for r in rows)


def _opt_int(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or int(v) != v or int(v) < 1:  # type: ignore[call-overload]
        raise ValueError(f"token count {v!r} must be a positive integer")
    return int(v)  # type: ignore[call-overload]


class ArrivalCursor:
    """This process's share of a global schedule: arrivals i with i mod count == index, before `until_s`.

    `claim()` hands each arrival out once, in time order; users of one process share a cursor.
    """

    def __init__(self, times: Iterable[float], *, index: int = 0, count: int = 1, until_s: float | None = None):
        if count < 1 or not 0 <= index < count:
            raise LoadTestError(f"process index {index} must be in [0, {count}) (count = number of processes)")
        mine = itertools.islice(enumerate(times), index, None, count)
        self._it = itertools.takewhile(lambda it: until_s is None or it[1] < until_s, mine)
        self.claimed = 0
        """Arrivals handed out so far."""

    def claim(self) -> tuple[int, float] | None:
        """Return the next (global index, time in s), or None when the schedule is exhausted."""
        nxt = next(self._it, None)
        if nxt is not None:
            self.claimed += 1
        return nxt
