"""Write a comparison: summary.json, replicas.png (load, queue, replicas, TTFT on one time axis), report.html.

Matplotlib with the Agg backend (no display), imported only here.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from serve_app.autoscaling.compare import format_table, percentile
from serve_app.autoscaling.des import ReplayResult

__all__ = ["write_report", "series"]


def series(r: ReplayResult, bin_s: float) -> dict[str, list[float]]:
    """Bin one run: arrivals/s and TTFT p95 by arrival time; queue and replicas at the last sample of each bin."""
    nb = max(1, math.ceil(r.horizon_s / bin_s))
    arrivals = [0.0] * nb
    ttfts: list[list[float]] = [[] for _ in range(nb)]
    for a, t in zip(r.arrival_s, r.ttft_s):
        b = min(nb - 1, int(a / bin_s))
        arrivals[b] += 1
        if t == t:
            ttfts[b].append(t)
    queue, running, target = [0.0] * nb, [0.0] * nb, [0.0] * nb
    for t, q, w, _run, nrun, _start, tgt in r.timeline:
        b = min(nb - 1, int(t / bin_s))
        queue[b], running[b], target[b] = q + w, nrun, tgt
    p95 = [(percentile(sorted(v), 95) or 0.0) * 1e3 if v else float("nan") for v in ttfts]
    return {"t_s": [i * bin_s for i in range(nb)], "arrivals_per_s": [a / bin_s for a in arrivals],
            "queue": queue, "replicas": running, "target": target, "ttft_p95_ms": p95}


def write_report(out: str | Path, results: Sequence[ReplayResult], rows: Sequence[dict[str, Any]], *,
                 title: str, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write summary.json, replicas.png and report.html into `out`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    horizon = max((r.horizon_s for r in results), default=1.0)
    bin_s = max(1.0, horizon / 400)
    data = {r.policy: series(r, bin_s) for r in results}
    (d / "summary.json").write_text(json.dumps({"title": title, "notes": list(notes), "policies": list(rows),
                                                "bin_s": bin_s, "series": data}, indent=1))
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    first = next(iter(data.values()))
    axes[0].plot(first["t_s"], first["arrivals_per_s"], color="black", lw=1)
    axes[0].set_ylabel("arrivals/s")
    for name, s in data.items():
        axes[1].plot(s["t_s"], s["queue"], lw=1, label=name)
        axes[2].step(s["t_s"], s["replicas"], where="post", lw=1.2, label=name)
        axes[3].plot(s["t_s"], s["ttft_p95_ms"], lw=1, label=name)
    axes[1].set_ylabel("queued + waiting")
    axes[2].set_ylabel("replicas serving")
    axes[3].set_ylabel("TTFT p95 ms")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("seconds")
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = d / "replicas.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1>" + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
            + f"<pre>{html.escape(format_table(rows))}</pre><img src='replicas.png' alt='load, queue, replicas and TTFT'>")
    (d / "report.html").write_text(page)
    return {"summary": d / "summary.json", "png": png, "html": d / "report.html"}
