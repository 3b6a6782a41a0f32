"""Judge and render the tracing-cost runs (the dict bench.tracing_cost writes as results.json).

Pure: reads the dict, never the machine. Each round measured every variant once per level,
minutes apart at most, so a variant is compared with tracing off run by run (a paired ratio per
round). Each variant is its own running stack, and stacks differ by more than their settings
(a first run showed sampling 0 slower than 0.01 in every round), so the run carries a second
stack with tracing off (CONTROL) and the noise is what that A/A pair did:

    noise band of a level = [min, max] of CONTROL / off over the rounds, and 1.0
                            (without CONTROL: tracing off's own min and max over its median)
    "within noise"        = the variant's median paired ratio lies inside that band
"""

from __future__ import annotations

from bench._measure import ENGINE, FRONT_END, Spread, cpu_by_group, fmt_num, fmt_ratio, fmt_spread, per_1k_tokens, spread, run_header

__all__ = ["BASE", "CONTROL", "level_runs", "paired_ratios", "noise_band", "within", "render_tracing_report"]

BASE = "off"
CONTROL = "off-b"  # a second stack with tracing off: the A/A pair with BASE


def level_runs(doc: dict, variant: str, level: int) -> dict[int, dict]:
    """round -> the valid Locust run of `variant` at `level` in that round."""
    return {r["round"]: r for r in doc["runs"]
            if r["variant"] == variant and r["concurrency"] == level and r["valid"]}


def paired_ratios(doc: dict, variant: str, level: int, metric: str) -> list[float]:
    """variant / tracing off for `metric` (a run's key), one per round where both runs are valid."""
    base, ours = level_runs(doc, BASE, level), level_runs(doc, variant, level)
    return [ours[k][metric] / base[k][metric] for k in sorted(ours.keys() & base.keys())
            if ours[k].get(metric) is not None and base[k].get(metric)]


def noise_band(doc: dict, level: int, metric: str) -> tuple[float, float] | None:
    """The A/A pair's paired ratios' range with 1.0, else tracing off's own (min / median, max / median)."""
    if CONTROL in doc["variants"]:
        aa = paired_ratios(doc, CONTROL, level, metric)
        return (min(aa + [1.0]), max(aa + [1.0])) if aa else None
    s = spread(r.get(metric) for r in level_runs(doc, BASE, level).values())
    if s is None or s.n < 2 or not s.median:
        return None
    return s.lo / s.median, s.hi / s.median


def within(ratios: Spread | None, band: tuple[float, float] | None) -> bool | None:
    """True when the median paired ratio lies inside the noise band (None when either is missing)."""
    if ratios is None or band is None:
        return None
    return band[0] <= ratios.median <= band[1]


def _cpu(doc: dict, variant: str, level: int) -> dict[str, Spread]:
    """CPU ms per 1,000 output tokens by role group, median and range over the variant's valid runs at `level`."""
    per_run = [per_1k_tokens(cpu_by_group(r["cpu_s_by_role"]), r["output_tokens_per_s"] * r["duration_s"])
               for r in level_runs(doc, variant, level).values() if r.get("cpu_s_by_role")]
    keys = {k for run in per_run for k in run}
    return {k: s for k in keys if (s := spread(run.get(k, 0.0) for run in per_run))}


def _verdict(w: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "–"}[w]


def _ratio_cell(doc: dict, key: str, level: int, metric: str, band, *, base: bool, verdict) -> str:
    """The tracing-off row shows the noise band; every other row its paired ratio and whether it is inside."""
    if base:
        return f"noise {band[0]:.2f}–{band[1]:.2f}×" if band else "–"
    r = spread(paired_ratios(doc, key, level, metric))
    return (f"{fmt_ratio(r.median if r else None)} ({fmt_ratio(r.lo if r else None)}–{fmt_ratio(r.hi if r else None)}) "
            f"{verdict(within(r, band))}")


def _rows(doc: dict, level: int) -> list[str]:
    out = []
    bands = {m: noise_band(doc, level, m) for m in ("output_tokens_per_s", "ttft_p50_ms")}
    for key, v in doc["variants"].items():
        runs = list(level_runs(doc, key, level).values())
        if not runs:
            out.append(f"| {level} | {v['label']} | not measured: {v.get('error') or 'no valid run'} | | | | | | |")
            continue
        tps, ttft = spread(r["output_tokens_per_s"] for r in runs), spread(r["ttft_p50_ms"] for r in runs)
        cpu = _cpu(doc, key, level)
        verdict = (lambda w: "(sets the band)") if key == CONTROL else _verdict
        tps_cell, ttft_cell = (_ratio_cell(doc, key, level, m, bands[m], base=key == BASE, verdict=verdict)
                               for m in ("output_tokens_per_s", "ttft_p50_ms"))
        out.append(f"| {level} | {v['label']} | {fmt_spread(tps)} | {tps_cell} | {fmt_spread(ttft, digits=1)} | {ttft_cell} "
                   f"| {fmt_spread(cpu.get('replica / API server'))} | {fmt_spread(cpu.get(FRONT_END))} "
                   f"| {fmt_spread(cpu.get(ENGINE))} |")
    return out


def _spans_table(doc: dict) -> list[str]:
    out = ["| variant | requests sent (warm-up included) | spans received | traces received | traces / request "
           "| spans / traced request |", "|---|---|---|---|---|---|"]
    for v in doc["variants"].values():
        sent, spans, traces = v.get("requests_sent", 0), v.get("spans", 0), v.get("traces", 0)
        share = f"{traces / sent:.3f}" if sent else "–"
        per = f"{spans / traces:.1f}" if traces else "–"
        out.append(f"| {v['label']} | {fmt_num(sent)} | {fmt_num(spans)} | {fmt_num(traces)} | {share} | {per} |")
    return out


def render_tracing_report(doc: dict) -> str:
    """Return the report: command, machine, the per-level table against tracing off, the span counts."""
    load = doc["load"]
    lines = [
        *run_header(doc),
        f"Load: Locust closed loop at concurrency {', '.join(map(str, load['levels']))}, {load['rounds']} rounds; each "
        f"round runs every variant once per level ({load['duration_s']:g} s each, order rotated per round); "
        f"{load['input_len']} input / {load['output_len']} output tokens, ignore_eos. Median (min–max) over rounds; "
        "× off is the median (min–max) of the per-round ratios to tracing off; 'noise' is the range of the same "
        "ratio for a second tracing-off stack (A/A) and 1.0 (without one: tracing off's own min–max over its "
        "median), and a variant is within noise when its median ratio lies inside it.",
        "",
        "| c | variant | out tok/s | tok/s × off, within noise? | TTFT p50 ms | TTFT p50 × off, within noise? "
        "| replica CPU ms / 1k tok | front-end CPU ms / 1k tok | engine CPU ms / 1k tok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in load["levels"]:
        lines += _rows(doc, level)
    lines += ["", "Spans that reached the OTLP endpoint (one receiver per variant):", "", *_spans_table(doc), ""]
    refused = [f"- {r['variant']} c={r['concurrency']} round {r['round']}: {r.get('reason')}" for r in doc["runs"]
               if not r["valid"]]
    if refused:
        lines += ["Refused runs (not in the medians):", *refused, ""]
    return "\n".join(lines)
