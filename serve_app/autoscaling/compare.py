"""Several policies over one trace, side by side: latency percentiles, SLO attainment, cost, churn.

Pure. `compare` replays the same trace (same seed, same latency model) once per policy and
summarizes each run; `format_table` prints them; `report.write_report` draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from serve_app.autoscaling.des import ReplayPolicy, ReplayResult, ReplaySetup, run_replay
from serve_app.autoscaling.traces import RequestTrace

__all__ = ["Slo", "summarize", "compare", "format_table", "percentile"]


@dataclass(frozen=True)
class Slo:
    """A TTFT objective: `attainment` of all requests get their first token within ttft_ms."""

    ttft_ms: float
    attainment: float = 0.95

    @classmethod
    def parse(cls, text: str, *, attainment: float | None = None) -> "Slo":
        """Read `ttft_p95_ms=500` (percentile from the name) or `ttft_ms=500`."""
        key, sep, value = text.partition("=")
        key = key.strip()
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--slo {text!r}: {value!r} is not a number; write e.g. ttft_p95_ms=500") from None
        if not sep or not key.startswith("ttft") or not key.endswith("_ms"):
            raise ValueError(f"--slo {text!r}: write ttft_pNN_ms=VALUE (e.g. ttft_p95_ms=500)")
        mid = key[len("ttft"):-len("_ms")].strip("_")
        pct = float(mid[1:]) / 100 if mid.startswith("p") else 0.95
        return cls(ms, attainment if attainment is not None else pct)

    def __str__(self) -> str:
        return f"TTFT <= {self.ttft_ms:g} ms for {self.attainment:.1%} of requests"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(len(sorted_values) * q / 100) - 1))
    return sorted_values[k]


def _dist(values: Iterable[float]) -> dict[str, float | None]:
    s = sorted(v for v in values if v == v)  # NaN: no such latency (shed, timed out, one token)
    return {f"p{q}": None if (v := percentile(s, q)) is None else round(v * 1e3, 2) for q in (50, 95, 99)}


def summarize(r: ReplayResult, slo: Slo | None = None) -> dict[str, Any]:
    """Return one JSON-able row: latencies in ms, counts, attainment (a miss for every unserved request)."""
    within = sum(1 for t in r.ttft_s if t == t and t * 1e3 <= slo.ttft_ms) if slo else None
    max_running = max((p[4] for p in r.timeline), default=0)
    return {
        "policy": r.policy,
        "requests": r.requests, "finished": r.finished, "shed": r.shed, "timed_out": r.timed_out,
        "killed": r.killed, "unfinished": r.unfinished,
        "ttft_ms": _dist(r.ttft_s), "tpot_ms": _dist(r.tpot_s), "e2e_ms": _dist(r.e2e_s),
        "slo": None if slo is None else str(slo),
        "slo_attainment": None if within is None else round(within / max(1, r.requests), 5),
        "slo_met": None if within is None else within / max(1, r.requests) >= slo.attainment - 1e-12,  # type: ignore[union-attr]
        "replica_s": round(r.replica_s, 1), "gpu_hours": round(r.gpu_hours, 4),
        "scale_events": r.scale_events, "flaps": r.flaps, "peak_queue": r.peak_queue, "max_replicas": max_running,
        "horizon_s": round(r.horizon_s, 1), "latency_model": r.latency,
    }


def compare(trace: RequestTrace, policies: Sequence[ReplayPolicy], setup: ReplaySetup, *, slo: Slo | None = None,
            progress: Callable[[str], None] | None = None) -> tuple[list[ReplayResult], list[dict[str, Any]]]:
    """Replay `trace` once per policy with the same setup; return the results and their summaries."""
    results, rows = [], []
    for p in policies:
        if progress:
            progress(p.name)
        r = run_replay(trace, p, setup)
        results.append(r)
        rows.append(summarize(r, slo))
    return results, rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render summaries as a fixed-width table, one policy a row."""
    header = ("policy", "TTFT p50/p95/p99 ms", "TPOT p50 ms", "E2E p95 ms", "SLO", "shed+timeout", "GPU-h",
              "replica-s", "max rep", "scales", "flaps", "peak queue")

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"

    lines = []
    for r in rows:
        t = r["ttft_ms"]
        att = "-" if r["slo_attainment"] is None else f"{r['slo_attainment']:.2%}" + (" ok" if r["slo_met"] else " MISS")
        lines.append((r["policy"], f"{f(t['p50'])}/{f(t['p95'])}/{f(t['p99'])}", f(r["tpot_ms"]["p50"]),
                      f(r["e2e_ms"]["p95"]), att, str(r["shed"] + r["timed_out"] + r["killed"]), f"{r['gpu_hours']:.3f}",
                      f"{r['replica_s']:,.0f}", str(r["max_replicas"]), str(r["scale_events"]), str(r["flaps"]),
                      f"{r['peak_queue']:,.0f}"))
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)
