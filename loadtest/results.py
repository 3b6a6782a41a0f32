"""The results schema of a load-test run (`results.json`), and how it is built from a run's files.

Pure: pydantic and json only. `RunResults` is the input of reports and of autoscaling replay;
`schema_version` changes whenever a field changes meaning or goes away (adding a field does
not). The JSON Schema is `RunResults.model_json_schema()`, kept in results.schema.json.

Sources: files the locust processes write into the run's out dir (see loadtest.locust_hooks), and a scrape:
- locust-stats.json: the master's (or local process's) merged Locust stats per (model, metric),
  with Locust's response-time histograms (bucketed to 3 significant digits). `metrics` and
  `per_model` come from here: the same numbers as Locust's table, CSV and web UI.
- process-<proc>.json: each process's own count of the events it fired; `processes`.
- requests-<proc>.jsonl: one line per request, merged into requests.jsonl (a `RequestRecord`
  per line, sorted by start). `timeline`, `sent_rps` and the token totals come from here.
  requests.jsonl is also a valid trace for `--shape trace` (start_unix_s + token lengths).
- the app's Prometheus endpoints, scraped during the run (loadtest.scraper): `server`.
`replay_trace(results)` turns the timeline into the autoscaling replay's trace points
(written as replay-trace.jsonl beside results.json).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Literal, Mapping

from pydantic import Field

from loadtest.plan import LoadPlan
from loadtest.server_series import ServerSeries
from serve_app.schema import Frozen

__all__ = [
    "SCHEMA_VERSION", "RunResults", "MetricStats", "RequestTotals", "FailureGroup", "TimelinePoint", "ProcessTotals",
    "EventTotals", "RequestRecord", "percentile", "metric_stats", "build_results", "read_requests", "load_results", "replay_trace",
    "PERCENTILES", "METRICS", "METRIC_UNITS",
]

SCHEMA_VERSION = 1
PERCENTILES = (50, 90, 95, 99)
METRICS = ("TTFT", "ITL", "TPOT", "E2E", "OTPS", "LAG")
"""Request-event names the LLM user fires (see loadtest.users)."""
METRIC_UNITS = {"OTPS": "tok/s"}
"""Unit of each metric's response_time when not ms."""


class MetricStats(Frozen):
    """One metric's distribution: Locust's merged samples of that request event."""

    count: int = Field(..., ge=0, description="Samples (E2E: requests, failed ones included, as Locust counts).")
    failures: int = Field(0, ge=0, description="Failed samples (only E2E has failures).")
    unit: Literal["ms", "tok/s"] = Field("ms", description="Unit of every value below; OTPS is in tokens per second.")
    mean: float | None = Field(None, description="Mean over samples.")
    min: float | None = Field(None, description="Smallest sample.")
    max: float | None = Field(None, description="Largest sample.")
    p50: float | None = Field(None, description="Median (from Locust's histogram: 3 significant digits).")
    p90: float | None = Field(None, description="90th percentile.")
    p95: float | None = Field(None, description="95th percentile.")
    p99: float | None = Field(None, description="99th percentile.")


class RequestTotals(Frozen):
    """Request counts, from the master's E2E events."""

    total: int = Field(..., ge=0, description="Requests finished (ok + failed).")
    ok: int = Field(..., ge=0, description="Requests that streamed to [DONE] with content.")
    failed: int = Field(..., ge=0, description="Non-2xx, broken or empty streams, error chunks.")


class FailureGroup(Frozen):
    """Identical failures grouped, as in Locust's failure table."""

    model: str = Field(..., description="Model the requests were sent to.")
    metric: str = Field(..., description="Event that failed (E2E).")
    error: str = Field(..., description="Error message: status and start of the body, or the transport error.")
    occurrences: int = Field(..., ge=1, description="How many requests failed this way.")


class TimelinePoint(Frozen):
    """One second of the run, from the request log; the series autoscaling replay consumes."""

    t_s: float = Field(..., description="Start of the bucket, seconds from the test start.")
    started: int = Field(..., ge=0, description="Requests sent in this bucket.")
    completed: int = Field(..., ge=0, description="Requests finished in this bucket (ok or failed).")
    failed: int = Field(..., ge=0, description="Requests that failed in this bucket.")
    output_tokens: int = Field(..., ge=0, description="Output tokens of the requests finished in this bucket.")
    in_flight: int = Field(..., ge=0, description="Requests sent but not finished at the end of the bucket.")
    ttft_p50_ms: float | None = Field(None, description="Median TTFT of the ok requests sent in this bucket.")
    tpot_p50_ms: float | None = Field(None, description=(
        "Median TPOT (a request's mean gap between output tokens) of the ok requests sent in this bucket."))


class EventTotals(Frozen):
    """One process's count of one request event."""

    model: str = Field(..., description="request_type of the event: the model name.")
    metric: str = Field(..., description="Event name: TTFT, ITL, TPOT, E2E, OTPS or LAG.")
    count: int = Field(..., ge=0, description="Events fired.")
    failures: int = Field(..., ge=0, description="Of which failures.")
    response_length_sum: int = Field(..., ge=0, description="Sum of response_length (E2E: output tokens).")


class ProcessTotals(Frozen):
    """What one locust process fired, counted by that process (checks the master's merge)."""

    proc: str = Field(..., description="local, or worker-<index>.")
    index: int = Field(..., ge=0, description="Process index: its share of the open-loop schedule is i mod count.")
    arrivals_claimed: int | None = Field(None, description="Open loop: scheduled arrivals this process took.")
    events: tuple[EventTotals, ...] = Field(..., description="Per (model, metric) counts.")


class RequestRecord(Frozen):
    """One request, as written to requests.jsonl."""

    i: int = Field(..., description="Global request index (arrival index in open loop).")
    proc: str = Field(..., description="Process that sent it.")
    model: str = Field(..., description="Model name sent.")
    start_unix_s: float = Field(..., description="When it was sent, epoch seconds.")
    due_s: float | None = Field(None, description="Open loop: scheduled send time, seconds from that process's start.")
    lag_ms: float | None = Field(None, description="Open loop: how late it was sent.")
    input_tokens: int = Field(..., description="Prompt tokens: the server's usage.prompt_tokens, else the planned length.")
    max_tokens: int = Field(..., description="max_tokens sent.")
    output_tokens: int = Field(..., description="Output tokens: usage.completion_tokens, else content chunks.")
    ttft_ms: float | None = Field(None, description="Time to first content token.")
    tpot_ms: float | None = Field(None, description="Time per output token after the first.")
    e2e_ms: float = Field(..., description="Sent to end of stream (or to the failure).")
    ok: bool = Field(..., description="Streamed to [DONE] with content.")
    error: str | None = Field(None, description="Why it failed.")
    trace_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description=(
        "W3C trace id sent in the request's traceparent: the key into the server's traces and request log."))


class RunResults(Frozen):
    """One load-test run: the plan, the latency distributions, totals, timeline and per-process counts."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Bumped when a field changes meaning or is removed.")
    kind: Literal["fleetserve.loadtest.results"] = "fleetserve.loadtest.results"
    host: str = Field(..., description="Base URL the load was sent to.")
    plan: LoadPlan = Field(..., description="The plan that generated the load.")
    workers: int = Field(..., ge=0, description="Locust worker processes (0 = one local process).")
    started_unix_s: float = Field(..., description="Test start (the master's test_start), epoch seconds.")
    finished_unix_s: float = Field(..., description="When the master wrote its stats, epoch seconds.")
    duration_s: float = Field(..., ge=0, description="Test start to the last request's end.")
    requests: RequestTotals = Field(..., description="Finished requests.")
    sent_rps: float = Field(..., ge=0, description=(
        "Requests sent per second: those sent within plan.duration_s of their process's test start, "
        "divided by plan.duration_s (the delivered rate of an open-loop shape)."))
    output_tokens: int = Field(..., ge=0, description="Output tokens of ok requests (usage, else chunks).")
    output_tokens_per_s: float = Field(..., ge=0, description="output_tokens / duration_s: throughput over the run.")
    metrics: dict[str, MetricStats] = Field(..., description="TTFT, ITL, TPOT, E2E, OTPS, LAG over all models.")
    per_model: dict[str, dict[str, MetricStats]] = Field(..., description="The same, per model name.")
    failures: tuple[FailureGroup, ...] = Field((), description="Failures grouped by message.")
    timeline: tuple[TimelinePoint, ...] = Field((), description="Per-second series from the request log.")
    server: ServerSeries | None = Field(None, description=(
        "What the app's metrics endpoints said during the run (queue, running, KV, replicas, target, scale "
        "events per model), on the timeline's time base; None when no endpoint was scraped (--metrics)."))
    processes: tuple[ProcessTotals, ...] = Field((), description="Each process's own event counts.")
    files: dict[str, str] = Field(default_factory=dict, description="Other outputs, relative to the out dir.")
    notes: tuple[str, ...] = Field((), description="Warnings about the run's validity (e.g. open-loop lag).")

    def process_count(self, metric: str) -> int:
        """Events of `metric` the processes counted themselves (sums to metrics[metric].count when no report was lost)."""
        return sum(e.count for p in self.processes for e in p.events if e.metric == metric)


def percentile(hist: Mapping[float, int], q: float) -> float | None:
    """Return the smallest value v with at least q% of the samples <= v (None for no samples)."""
    n = sum(hist.values())
    if n == 0:
        return None
    need = max(1, math.ceil(n * q / 100))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= need:
            return float(value)
    return float(max(hist))


def metric_stats(entries: Iterable[Mapping], *, unit: str = "ms") -> MetricStats:
    """Merge Locust stats entries (dicts as in locust-stats.json) of one metric into its distribution."""
    hist: dict[float, int] = defaultdict(int)
    count = failures = 0
    total = 0.0
    lo: float | None = None
    hi: float | None = None
    for e in entries:
        count += e["num_requests"]
        failures += e["num_failures"]
        total += e["total_response_time"]
        for k, v in e["response_times"].items():
            hist[float(k)] += v
        if e.get("min_response_time") is not None:
            lo = e["min_response_time"] if lo is None else min(lo, e["min_response_time"])
        if e["num_requests"]:
            hi = e["max_response_time"] if hi is None else max(hi, e["max_response_time"])
    pct = {f"p{q}": percentile(hist, q) for q in PERCENTILES}
    return MetricStats(count=count, failures=failures, unit=unit, mean=total / count if count else None,  # type: ignore[arg-type]
                       min=lo, max=hi, **pct)


def read_requests(path: str | Path) -> list[RequestRecord]:
    """Read a requests.jsonl file."""
    return [RequestRecord.model_validate_json(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _timeline(records: list[RequestRecord], t0: float) -> tuple[TimelinePoint, ...]:
    if not records:
        return ()
    ends = [r.start_unix_s + r.e2e_ms / 1000 for r in records]
    n = int(math.floor(max(ends) - t0)) + 1
    started, completed, failed, tokens = [0] * n, [0] * n, [0] * n, [0] * n
    ttfts: list[list[float]] = [[] for _ in range(n)]
    tpots: list[list[float]] = [[] for _ in range(n)]
    delta = [0] * (n + 1)  # in-flight changes at bucket boundaries
    for r, end in zip(records, ends):
        s = min(max(int(r.start_unix_s - t0), 0), n - 1)
        e = min(max(int(end - t0), 0), n - 1)
        started[s] += 1
        completed[e] += 1
        failed[e] += int(not r.ok)
        tokens[e] += r.output_tokens if r.ok else 0
        if r.ok and r.ttft_ms is not None:
            ttfts[s].append(r.ttft_ms)
        if r.ok and r.tpot_ms is not None:
            tpots[s].append(r.tpot_ms)
        delta[s] += 1
        delta[e] -= 1
    out, live = [], 0
    for b in range(n):
        live += delta[b]
        out.append(TimelinePoint(t_s=float(b), started=started[b], completed=completed[b], failed=failed[b],
                                 output_tokens=tokens[b], in_flight=live,
                                 ttft_p50_ms=statistics.median(ttfts[b]) if ttfts[b] else None,
                                 tpot_p50_ms=statistics.median(tpots[b]) if tpots[b] else None))
    return tuple(out)


def replay_trace(results: RunResults) -> list[dict]:
    """Return the timeline as `serve_app.autoscaling.replay` trace points (one per second).

    The client sees requests in the system, not where they wait: in_flight goes to
    running_requests, so replay with `--slots-per-replica` (which spreads in-flight work over
    the replicas the replay has) rather than as recorded.
    """
    return [{"t_s": p.t_s, "running_requests": float(p.in_flight),
             "ttft_s": p.ttft_p50_ms / 1000 if p.ttft_p50_ms is not None else None} for p in results.timeline]


def build_results(*, stats: Mapping, processes: Iterable[Mapping], records: list[RequestRecord], plan: LoadPlan,
                  host: str, workers: int, files: Mapping[str, str] = ()) -> RunResults:
    """Assemble RunResults from locust-stats.json (`stats`), the process-*.json docs and the request log."""
    processes = list(processes)
    by_metric: dict[str, list[Mapping]] = defaultdict(list)
    by_model: dict[str, dict[str, list[Mapping]]] = defaultdict(lambda: defaultdict(list))
    for e in stats["entries"]:
        by_metric[e["metric"]].append(e)
        by_model[e["model"]][e["metric"]].append(e)
    metrics = {m: metric_stats(es, unit=METRIC_UNITS.get(m, "ms")) for m, es in sorted(by_metric.items())}
    per_model = {model: {m: metric_stats(es, unit=METRIC_UNITS.get(m, "ms")) for m, es in sorted(ms.items())}
                 for model, ms in sorted(by_model.items())}
    e2e = metrics.get("E2E") or MetricStats(count=0)
    t0 = float(stats["t0_unix_s"])
    last_end = max((r.start_unix_s + r.e2e_ms / 1000 for r in records), default=t0)
    duration = max(last_end - t0, 0.0)
    out_tokens = sum(r.output_tokens for r in records if r.ok)
    window = plan.duration_s or duration
    # Each process's clock starts at its own test_start (a worker's a few ms after the master's).
    proc_t0 = {p["proc"]: float(p["t0_unix_s"]) for p in processes if p.get("t0_unix_s") is not None}
    notes = []
    lag = metrics.get("LAG")
    if lag and lag.p99 is not None and lag.p99 > 100:
        notes.append(f"open-loop LAG p99 is {lag.p99:.0f} ms: too few users to carry the schedule on time; "
                     f"raise users above rate x E2E latency")
    if len(records) != e2e.count:
        notes.append(f"request log has {len(records)} requests but the master counted {e2e.count} E2E events: "
                     f"requests in flight at the end or lost worker reports; raise drain_s")
    procs = tuple(ProcessTotals(proc=p["proc"], index=p["index"], arrivals_claimed=p.get("arrivals_claimed"),
                                events=tuple(EventTotals(**e) for e in p["events"])) for p in processes)
    for m, st in metrics.items():
        own = sum(e.count for p in procs for e in p.events if e.metric == m)
        if procs and own != st.count:
            notes.append(f"{m}: the master merged {st.count} events but the processes fired {own}: a worker's last "
                         f"report was lost; raise drain_s")
    return RunResults(
        host=host, plan=plan, workers=workers, started_unix_s=t0, finished_unix_s=float(stats["end_unix_s"]),
        duration_s=duration,
        requests=RequestTotals(total=e2e.count, ok=e2e.count - e2e.failures, failed=e2e.failures),
        sent_rps=sum(1 for r in records if r.start_unix_s - proc_t0.get(r.proc, t0) < window) / window if window > 0 else 0.0,
        output_tokens=out_tokens, output_tokens_per_s=out_tokens / duration if duration > 0 else 0.0,
        metrics=metrics, per_model=per_model,
        failures=tuple(FailureGroup(**f) for f in stats.get("errors", ())),
        timeline=_timeline(records, t0),
        processes=procs,
        files=dict(files), notes=tuple(notes),
    )


def load_results(path: str | Path) -> RunResults:
    """Read a results.json."""
    return RunResults.model_validate(json.loads(Path(path).read_text()))

