"""Report of a strategy sweep: a terminal table, PNG plots and one self-contained HTML page.

    SweepResults ──► table_lines()        terminal table, one row per (strategy, ladder step)
                 ├─► throughput.png       output tok/s vs load, one line per strategy (the main plot)
                 ├─► latency.png          TTFT and ITL p50 (solid) and p99 (dashed) vs load
                 ├─► goodput.png          requests/s meeting the SLO vs load (dotted: all ok requests/s)
                 ├─► timeline-<slug>.png  per strategy: server queue/replicas beside client TTFT (loadtest.timeline)
                 └─► report.html          all of the above, PNGs embedded as base64: one file to mail

matplotlib (Agg backend, no display) is imported inside the plot functions, so `import loadtest`
stays light; no ray, vllm or locust here.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loadtest.sweep_results import StepResult, StrategyResult, SweepResults

__all__ = ["ReportFiles", "write_report", "table_lines", "best_line", "plot_throughput", "plot_latency", "plot_goodput"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ReportFiles:
    """Paths of a written report."""

    html: Path
    throughput_png: Path
    latency_png: Path
    goodput_png: Path
    timelines: tuple[Path, ...] = ()  # one per strategy with a step: server queue and replicas beside client TTFT


def _load_label(sweep: SweepResults) -> str:
    return "concurrent users" if sweep.ladder.kind == "concurrency" else "offered rate (req/s)"


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


# "accel": workers of all replicas (TP x PP x replicas): tp2 holds twice tp1's accelerators, so
# "tok/s/accel" is the figure that compares them per unit of hardware.
_COLUMNS = ("strategy", "layout", "load", "req/s", "out tok/s", "accel", "tok/s/accel", "TTFT p50", "TTFT p95",
            "TTFT p99", "ITL p50", "ITL p99", "TPOT p50", "goodput/s", "in SLO", "failed")


def accelerators(s: StrategyResult) -> int | None:
    """Accelerators (engine workers) the strategy holds: TP x PP per replica, times replicas."""
    return s.layout.tensor * s.layout.pipeline * s.layout.replicas if s.layout else None


def _row(s: StrategyResult, st: StepResult) -> tuple[str, ...]:
    layout = s.layout.short() if s.layout else "-"
    n = accelerators(s)
    return (s.name, layout, f"{st.load:g}", f"{st.requests_per_s:.2f}", f"{st.output_tokens_per_s:.1f}",
            str(n) if n else "-", f"{st.output_tokens_per_s / n:.1f}" if n else "-",
            _fmt(st.ttft_ms.p50), _fmt(st.ttft_ms.p95), _fmt(st.ttft_ms.p99), _fmt(st.itl_ms.p50), _fmt(st.itl_ms.p99),
            _fmt(st.tpot_ms.p50), f"{st.goodput.requests_per_s:.2f}", f"{st.goodput.fraction:.0%}", str(st.requests_failed))


def _rows(sweep: SweepResults) -> list[tuple[str, ...]]:
    rows = []
    for s in sweep.strategies:
        rows += [_row(s, st) for st in s.steps]
        if s.error:
            rows.append((s.name, s.layout.short() if s.layout else "-", "-", *["-"] * (len(_COLUMNS) - 4), "error"))
    return rows


def best_line(sweep: SweepResults) -> str:
    """Name the (strategy, step) with the most output tokens/s from requests meeting the SLO."""
    cands = [(st.goodput.output_tokens_per_s, s, st) for s in sweep.strategies for st in s.steps]
    if not cands or max(c[0] for c in cands) <= 0:
        return f"no step had requests meeting the SLO ({sweep.slo.describe()})"
    tps, s, st = max(cands, key=lambda c: c[0])
    return (f"most tokens/s within the SLO ({sweep.slo.describe()}): {s.name} at {sweep.ladder.kind} {st.load:g} -- "
            f"{tps:.1f} tok/s from {st.goodput.requests_per_s:.2f} req/s in SLO ({st.goodput.fraction:.0%} of requests), "
            f"{st.output_tokens_per_s:.1f} tok/s in all")


def table_lines(sweep: SweepResults) -> list[str]:
    """Format the sweep as a terminal table (latencies in ms), a best-at-SLO line, errors and notes."""
    rows = [_COLUMNS] + _rows(sweep)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    left = {0, 1}
    lines = [f"{sweep.model} ({sweep.source}): {len(sweep.strategies)} strategies x {sweep.ladder.kind} "
             f"{', '.join(f'{v:g}' for v in sweep.ladder.values)}; {sweep.ladder.input_tokens} in / "
             f"{sweep.ladder.output_tokens} out tokens, {sweep.ladder.step_duration_s:g} s per step; latencies in ms"]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    lines.append(best_line(sweep))
    lines += [f"error: {s.name}: {s.error}" for s in sweep.strategies if s.error]
    lines += [f"note: {n}" for n in sweep.notes]
    return lines


def _figure(plot: Callable, path: Path, *, size=(7.5, 4.5), rows: int = 1) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed (CI, ssh)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=size, squeeze=False)
    try:
        plot([a[0] for a in axes])
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _series(s: StrategyResult, value: Callable[[StepResult], float | None]) -> tuple[list[float], list[float]]:
    pts = [(st.load, value(st)) for st in sorted(s.steps, key=lambda st: st.load)]
    pts = [(x, y) for x, y in pts if y is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def _axis(ax, sweep: SweepResults) -> None:
    ax.set_xticks(sorted(set(sweep.ladder.values)))  # the ladder's loads, not matplotlib's round numbers
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def _subtitle(sweep: SweepResults) -> str:
    nodes = len(sweep.cluster.nodes)
    return (f"{sweep.model}: {sweep.ladder.input_tokens} in / {sweep.ladder.output_tokens} out tokens, "
            f"{nodes} Ray node{'s' * (nodes != 1)}")


def plot_throughput(sweep: SweepResults, path: str | Path) -> Path:
    """Write the main plot: output tokens/s vs load, one line per strategy."""
    def draw(axes):
        ax = axes[0]
        for s in sweep.strategies:
            xs, ys = _series(s, lambda st: st.output_tokens_per_s)
            if xs:
                ax.plot(xs, ys, marker="o", label=s.name)
        ax.set_xlabel(_load_label(sweep))
        ax.set_ylabel("output tokens / s")
        ax.set_title(f"Throughput per strategy -- {_subtitle(sweep)}", fontsize=10)
        _axis(ax, sweep)
        ax.legend(title="strategy")
    return _figure(draw, Path(path))


def plot_latency(sweep: SweepResults, path: str | Path) -> Path:
    """Write TTFT and ITL p50 (solid) and p99 (dashed) vs load, one colour per strategy."""
    def draw(axes):
        for ax, attr, name in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "itl_ms", "ITL")):
            for i, s in enumerate(sweep.strategies):
                colour = f"C{i}"
                for q, style in (("p50", "-"), ("p99", "--")):
                    xs, ys = _series(s, lambda st: getattr(getattr(st, attr), q))
                    if xs:
                        ax.plot(xs, ys, style, marker="o", color=colour, label=s.name if q == "p50" else None)
            ax.set_ylabel(f"{name} (ms)")
            _axis(ax, sweep)
        # The SLO the goodput is scored at, where it bounds the plotted figure (TPOT's bound over ITL).
        for ax, bound, label in ((axes[0], sweep.slo.ttft_ms, "TTFT SLO"), (axes[1], sweep.slo.tpot_ms, "TPOT SLO")):
            if bound:
                top = ax.get_ylim()[1]
                if bound <= 3 * top:  # in view (or near): show it; far above, the data would flatten
                    ax.set_ylim(top=max(top, bound * 1.08))
                    ax.axhline(bound, color="k", linestyle=":", linewidth=1, label=f"{label} {bound:g} ms")
                else:
                    ax.plot([], [], "k:", label=f"{label} {bound:g} ms (above this range)")
        for ax in axes:
            ax.plot([], [], "k-", label="p50")
            ax.plot([], [], "k--", label="p99")
            ax.legend(title="strategy", fontsize=8)
        axes[0].set_title(f"Latency percentiles (solid p50, dashed p99) -- {_subtitle(sweep)}", fontsize=10)
        axes[1].set_xlabel(_load_label(sweep))
    return _figure(draw, Path(path), size=(7.5, 7), rows=2)


def plot_goodput(sweep: SweepResults, path: str | Path) -> Path:
    """Write goodput (requests/s meeting the SLO) vs load; dotted: all ok requests/s."""
    def draw(axes):
        ax = axes[0]
        for i, s in enumerate(sweep.strategies):
            xs, ys = _series(s, lambda st: st.goodput.requests_per_s)
            if xs:
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"{s.name} in SLO")
                xs2, ys2 = _series(s, lambda st: st.requests_per_s)
                ax.plot(xs2, ys2, ":", color=f"C{i}", alpha=0.7, label=f"{s.name} all")
        ax.set_xlabel(_load_label(sweep))
        ax.set_ylabel("requests / s")
        ax.set_title(f"Goodput at {sweep.slo.describe()}", fontsize=10)
        _axis(ax, sweep)
        ax.legend(fontsize=8, ncol=2)
    return _figure(draw, Path(path))


_NO_TIMELINE = ("<p>No timeline: no step's results.json was found under the sweep dir (each step's run dir "
                "holds it, with the server series scraped during the step).</p>")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _step_links(s: StrategyResult, out: Path, sweep_dir: Path) -> str:
    links = []
    for st in s.steps:  # Locust's own report of each step, when the step's run dir is at hand
        page = sweep_dir / st.run_dir / "report.html"
        if page.exists():
            href = os.path.relpath(page, out)
            links.append(f' <a href="{html.escape(href)}">{html.escape(f"{st.load:g}")}</a>')
    return ("; Locust reports:" + "".join(links)) if links else ""


def _html(sweep: SweepResults, files: ReportFiles, sweep_dir: Path) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in _rows(sweep))
    strategies = "".join(
        f"<li><b>{e(s.name)}</b>: {e(s.layout.short() if s.layout else '-')}"
        + (f"; bundles {e(str(list(s.layout.bundles)))}, executor {e(s.layout.executor)}" if s.layout else "")
        + (f"; placement groups seen: {e(', '.join(f'{len(g.bundles)} bundles {g.strategy} on {g.nodes} node(s)' for g in s.placement_groups))}"
           if s.placement_groups else "")
        + (f"; ready in {s.ready_s:.1f} s" if s.ready_s is not None else "")
        + _step_links(s, files.html.parent, sweep_dir)
        + (f' <span class="err">error: {e(s.error)}</span>' if s.error else "") + "</li>"
        for s in sweep.strategies)
    nodes = "".join(f"<li>{e(n.node_id)}: {e(', '.join(f'{k} {v:g}' for k, v in sorted(n.resources.items())))}</li>"
                    for n in sweep.cluster.nodes)
    notes = "".join(f"<li>{e(n)}</li>" for n in sweep.notes)
    lad = sweep.ladder
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fleetserve sweep: {e(sweep.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th:nth-child(-n+2), td:nth-child(-n+2) {{ text-align: left; }}
img {{ max-width: 100%; margin: 0.5em 0; }} .err {{ color: #b00; }}
</style></head><body>
<h1>Strategy sweep: {e(sweep.model)}</h1>
<p>Weights <code>{e(sweep.source)}</code>; load sent to <code>{e(sweep.host)}</code>. Ladder: {e(lad.kind)}
{e(', '.join(f'{v:g}' for v in lad.values))}, {lad.step_duration_s:g} s per step (+{lad.drain_s:g} s drain),
{lad.input_tokens} prompt / {lad.output_tokens} output tokens (ignore_eos), {lad.warmup_requests} warm-up requests.
Goodput SLO: {e(sweep.slo.describe())}.</p>
<p><b>{e(best_line(sweep))}</b></p>
<h2>Throughput</h2>{_img(files.throughput_png, "output tokens per second vs load, per strategy")}
<h2>Results</h2><p>Latencies in ms; <i>accel</i> is the accelerators (engine workers) a strategy holds
(TP x PP x replicas) and <i>tok/s/accel</i> its output tokens/s divided by them. Each step's Locust page
lists every event in columns headed "ms", which Locust's page does not let us relabel: its OTPS rows are
output tokens per second, not milliseconds.</p><table><tr>{head}</tr>{body}</table>
<h2>Latency</h2>{_img(files.latency_png, "TTFT and ITL percentiles vs load")}
<h2>Goodput</h2>{_img(files.goodput_png, "requests per second meeting the SLO vs load")}
<h2>Timeline per strategy</h2><p>Each strategy's steps end to end on one time axis: client TTFT, TPOT and
goodput above the server's queue, running requests, KV-cache usage, replicas and autoscaler target, as
scraped from the app's metrics endpoints during each step (a panel says so when nothing was measured).</p>
{"".join(_img(p, f"timeline of {p.stem}") for p in files.timelines) or _NO_TIMELINE}
<h2>Strategies</h2><ul>{strategies}</ul>
<h2>Cluster</h2><p>Ray {e(sweep.cluster.ray_version)} at {e(sweep.cluster.address)}; load generator
{e(sweep.cluster.load_generator)}.</p><ul>{nodes}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<p>Data: <code>sweep.json</code> (schema <code>sweep.schema.json</code>); each step's Locust files in its directory.</p>
</body></html>
"""


def write_report(sweep: SweepResults, out_dir: str | Path, *, sweep_dir: str | Path | None = None) -> ReportFiles:
    """Write throughput.png, latency.png, goodput.png, timeline-<strategy>.png and report.html (PNGs embedded).

    The page links each step's Locust report found under `sweep_dir` (default `out_dir`).
    """
    from loadtest.timeline import strategy_timeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(sweep_dir) if sweep_dir is not None else out
    timelines = (strategy_timeline(sweep, s, root, out / f"timeline-{s.slug}.png") for s in sweep.strategies)
    files = ReportFiles(html=out / "report.html", throughput_png=plot_throughput(sweep, out / "throughput.png"),
                        latency_png=plot_latency(sweep, out / "latency.png"),
                        goodput_png=plot_goodput(sweep, out / "goodput.png"),
                        timelines=tuple(p for p in timelines if p is not None))
    files.html.write_text(_html(sweep, files, root))
    return files
