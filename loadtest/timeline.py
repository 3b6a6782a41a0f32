"""Timeline plots: the server's queue and replicas beside the client's TTFT, TPOT and goodput, one time axis.

    RunResults (+ requests.jsonl) ──► Segment ─┐
    a sweep strategy's steps, each a Segment ──┴► plot_timeline(segments) ──► PNG, four panels sharing t:
        1 client TTFT p50 (left) and TPOT p50 (right) of the requests sent each second
        2 client requests/s completed ok, and goodput (completed within the SLO)
        3 server queue (waiting requests) and running requests per model; KV-cache usage (right)
        4 server replicas and the autoscaler's target per model; scale events marked
A run without server series (not scraped, or no point) gets panels 3-4 saying so, and why:
a plot never draws what was not measured. matplotlib is imported inside (Agg backend).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from loadtest.results import RequestRecord, RunResults, load_results, read_requests
from loadtest.sweep_results import Slo, StrategyResult, SweepResults, goodput

__all__ = ["Segment", "segment_of_run", "strategy_segments", "plot_timeline", "write_run_report", "strategy_timeline",
           "TIMELINE_PNG"]

TIMELINE_PNG = "timeline.png"


@dataclass(frozen=True)
class Segment:
    """One run placed on the plot's time axis: its results, request log, label and start offset."""

    results: RunResults
    records: tuple[RequestRecord, ...] | None  # None: no request log (goodput not computed)
    label: str
    offset_s: float = 0.0  # the run's t=0 on the plot's axis


def segment_of_run(run_dir: str | Path, *, label: str = "", offset_s: float = 0.0) -> Segment:
    """Read a run dir's results.json and requests.jsonl (when present) into a Segment."""
    d = Path(run_dir)
    log = d / "requests.jsonl"
    return Segment(load_results(d / "results.json"), tuple(read_requests(log)) if log.exists() else None, label, offset_s)


def strategy_segments(s: StrategyResult, sweep_dir: str | Path) -> tuple[list[Segment], list[str]]:
    """One Segment per step of `s` whose run dir has results.json, placed by wall clock; and the steps missing."""
    segs, missing = [], []
    first: float | None = None
    for st in s.steps:
        d = Path(sweep_dir) / st.run_dir
        if not (d / "results.json").exists():
            missing.append(f"{st.load:g}")
            continue
        seg = segment_of_run(d, label=f"{st.load:g}")
        first = seg.results.started_unix_s if first is None else first
        segs.append(Segment(seg.results, seg.records, seg.label, seg.results.started_unix_s - first))
    return segs, missing


def _goodput_per_s(seg: Segment, slo: Slo) -> tuple[list[float], list[float]]:
    """Requests finished each second that met `slo`, by end time (goodput's numerator, bucketed)."""
    t0 = seg.results.started_unix_s
    by_s: dict[int, list[RequestRecord]] = {}
    for r in seg.records or ():
        by_s.setdefault(int(r.start_unix_s + r.e2e_ms / 1000 - t0), []).append(r)
    ts = sorted(by_s)
    return [seg.offset_s + t for t in ts], [goodput(by_s[t], slo, 1.0).requests_per_s for t in ts]


def _no_data(ax, text: str) -> None:
    ax.set_yticks([])  # no scale for what was not measured
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#a00", wrap=True)


def _why_no_server(segs: Sequence[Segment]) -> str | None:
    """None when some segment has server points; else what the report must say instead."""
    if any(seg.results.server and any(m.points for m in seg.results.server.models.values()) for seg in segs):
        return None
    scraped = [seg.results.server for seg in segs if seg.results.server is not None]
    if not scraped:
        return "server not measured: no metrics endpoint was scraped (loadtest run/sweep --metrics URL)"
    s = scraped[0]
    why = f"; {s.errors[0]}" if s.errors else ": no fleetserve engine signals in the scrapes"
    return f"server not measured: {s.rounds} scrape rounds of {', '.join(s.endpoints)} gave no series{why}"


def plot_timeline(segs: Sequence[Segment], path: str | Path, *, title: str, slo: Slo | None = None) -> Path:
    """Write the four-panel timeline of `segs` (one run, or a strategy's steps end to end) to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, ssh)
    import matplotlib.pyplot as plt

    fig, (lat, thr, queue, reps) = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    try:
        _client_panels(lat, thr, segs, slo)
        _server_panels(queue, reps, segs)
        for seg in segs:
            if seg.label and len(segs) > 1:
                for ax in (lat, thr, queue, reps):
                    ax.axvline(seg.offset_s, color="#888", linewidth=0.8, linestyle=":")
                lat.annotate(seg.label, (seg.offset_s, 0.0), xycoords=("data", "axes fraction"), fontsize=8,
                             xytext=(2, 3), textcoords="offset points")  # bottom: the legends sit at the top
        for ax in (lat, thr, queue, reps):
            ax.grid(alpha=0.3)
        reps.set_xlabel("seconds from the test start" + (" (steps end to end by wall clock)" if len(segs) > 1 else ""))
        lat.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def _client_panels(lat, thr, segs: Sequence[Segment], slo: Slo | None) -> None:
    tpot = lat.twinx()
    for i, seg in enumerate(segs):
        tl = seg.results.timeline
        first = i == 0
        pts = [(seg.offset_s + p.t_s, p.ttft_p50_ms) for p in tl if p.ttft_p50_ms is not None]
        lat.plot([x for x, _ in pts], [y for _, y in pts], "-", color="C0", label="TTFT p50" if first else None)
        pts = [(seg.offset_s + p.t_s, p.tpot_p50_ms) for p in tl if p.tpot_p50_ms is not None]
        tpot.plot([x for x, _ in pts], [y for _, y in pts], "--", color="C1", label="TPOT p50 (right)" if first else None)
        thr.plot([seg.offset_s + p.t_s for p in tl], [p.completed - p.failed for p in tl], "-", color="C2",
                 label="completed ok" if first else None)
        if slo is not None and seg.records is not None:
            xs, ys = _goodput_per_s(seg, slo)
            thr.plot(xs, ys, "--", color="C3", label=f"goodput ({slo.describe()})" if first else None)
    if slo is not None and any(seg.records is None for seg in segs):
        thr.plot([], [], " ", label="goodput: no request log for some runs")
    lat.set_ylabel("client TTFT (ms)")
    tpot.set_ylabel("client TPOT (ms)")
    lat.set_ylim(bottom=0)
    tpot.set_ylim(bottom=0)
    h1, l1 = lat.get_legend_handles_labels()
    h2, l2 = tpot.get_legend_handles_labels()
    lat.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    thr.set_ylabel("client requests / s")
    thr.set_ylim(bottom=0)
    thr.legend(fontsize=7, loc="upper left")


def _server_panels(queue, reps, segs: Sequence[Segment]) -> None:
    why = _why_no_server(segs)
    queue.set_ylabel("server requests")
    reps.set_ylabel("replicas")
    if why:
        _no_data(queue, why)
        _no_data(reps, why)
        return
    kv = queue.twinx()
    kv.set_ylabel("KV-cache usage, fullest replica (%)")
    models = sorted({m for seg in segs if seg.results.server for m in seg.results.server.models})
    seen: set[str] = set()
    for j, model in enumerate(models):
        colour = f"C{j}"
        for seg in segs:
            series = seg.results.server.models.get(model) if seg.results.server else None
            if series is None or not series.points:
                continue
            first = model not in seen
            seen.add(model)
            ts = [seg.offset_s + p.t_s for p in series.points]
            queue.plot(ts, [p.waiting_requests for p in series.points], "-", color=colour,
                       label=f"{model} waiting (queue)" if first else None)
            queue.plot(ts, [p.running_requests for p in series.points], "--", color=colour,
                       label=f"{model} running" if first else None)
            kvs = [(t, p.kv_usage_max * 100) for t, p in zip(ts, series.points) if p.kv_usage_max is not None]
            kv.plot([t for t, _ in kvs], [v for _, v in kvs], ":", color=colour, alpha=0.7,
                    label=f"{model} KV max (right)" if first else None)
            # Wide and pale under thin and dashed: a target equal to the replicas stays visible.
            reps.step(ts, [p.replicas for p in series.points], where="post", color=colour, linewidth=4, alpha=0.45,
                      label=f"{model} replicas (reporting)" if first else None)
            tgt = [(t, p.target_replicas) for t, p in zip(ts, series.points) if p.target_replicas is not None]
            reps.step([t for t, _ in tgt], [v for _, v in tgt], "--", where="post", color=colour, linewidth=1.2,
                      label=f"{model} autoscaler target" if first and tgt else None)
            for ev in series.scale_events:
                reps.axvline(seg.offset_s + ev.t_s, color="#888", alpha=0.4, linewidth=1, linestyle="-.")
    queue.set_ylim(bottom=0)
    kv.set_ylim(0, 100)
    h1, l1 = queue.get_legend_handles_labels()
    h2, l2 = kv.get_legend_handles_labels()
    queue.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    reps.set_ylim(bottom=0, top=max([1.0, *reps.get_ylim()[1:]]) + 0.5)
    reps.yaxis.get_major_locator().set_params(integer=True)
    reps.plot([], [], color="#888", alpha=0.4, linewidth=1, linestyle="-.", label="scale event")
    reps.legend(fontsize=7, loc="upper left")
    # Ray's agent re-exports a gauge once per report period: the plot must not look finer than that.
    queue.set_title("server values as Ray exports them: fresh once per RAY_metrics_report_interval_ms "
                    "(default 10 s)", loc="right", fontsize=7, color="#555")
    notes = [f"{n} scrape(s) failed" for n in (seg.results.server.scrapes_failed for seg in segs if seg.results.server) if n]
    if notes:
        reps.text(0.99, 0.03, "; ".join(notes), transform=reps.transAxes, ha="right", fontsize=7, color="#a00")


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None, *, slo: Slo | None = Slo()) -> Path:
    """Write timeline.png of the run in `run_dir` (results.json, requests.jsonl) into `out_dir` (default run_dir)."""
    seg = segment_of_run(run_dir)
    r = seg.results
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    e2e = [x.e2e_ms for x in seg.records or () if x.ok]
    median = f", E2E p50 {statistics.median(e2e):.0f} ms" if e2e else ""
    title = (f"{', '.join(r.plan.models)}: {r.plan.shape.kind} load, {r.requests.total} requests "
             f"({r.requests.failed} failed){median}")
    return plot_timeline([seg], out / TIMELINE_PNG, title=title, slo=slo)


def strategy_timeline(sweep: SweepResults, s: StrategyResult, sweep_dir: str | Path, path: str | Path) -> Path | None:
    """Write one strategy's timeline: its ladder steps end to end, labelled with their loads (None: no step ran)."""
    segs, missing = strategy_segments(s, sweep_dir)
    if not segs:
        return None
    title = f"{s.name}: {sweep.ladder.kind} steps on one time axis ({sweep.model})"
    if missing:
        title += f"; no results.json for step(s) {', '.join(missing)}"
    return plot_timeline(segs, path, title=title, slo=sweep.slo)
