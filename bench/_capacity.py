"""Pure arithmetic and tables of the front-end capacity benchmark (bench.frontend_capacity).

No ray, vllm, locust or sockets: reads the dict bench.frontend_capacity writes as results.json.
Each stack there is
    {"label", "kind": "vllm" | "fleetserve", "front_ends": N,
     "levels": {"<c>": {"runs": [one Locust run per round: output_tokens_per_s, duration_s, valid,
                                  ttft_p50_ms, cpu_s_by_role, loadgen_cpu_s, ...]}},
     "startup_runs_s": [one per round]}
so bench._report's per-level helpers (level_spreads, cpu_per_1k_tokens) read it as they read
serving_overhead's results.

The capacity of a stack is its peak: the concurrency level with the highest median output
tokens/s over the rounds. It counts as reached ("flat") when throughput stopped rising, i.e.
the peak is not the last level measured or the last step gained less than PLATEAU_GAIN;
otherwise the table says it was still rising, so more concurrency might have carried more.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench._measure import BACKGROUND, ENGINE, FRONT_END, ROLE_GROUPS, Spread, fmt_num, fmt_ratio, fmt_spread, ratio, run_header
from bench._report import cpu_per_1k_tokens, level_spreads

__all__ = ["PLATEAU_GAIN", "Peak", "find_peak", "peer_key", "extra_per_1k_tokens", "render_capacity_report"]

PLATEAU_GAIN = 0.05
"""A step up in concurrency that gains less than this share of tok/s means throughput stopped rising."""

_GROUPS = (*(g for _, g in ROLE_GROUPS if g != ENGINE), BACKGROUND)


@dataclass(frozen=True)
class Peak:
    """Where a stack's output tokens/s topped out over the levels measured."""

    level: int
    tps: Spread
    flat: bool  # throughput stopped rising (see the module docstring)
    reason: str


def find_peak(tps_by_level: dict[int, Spread | None], *, plateau_gain: float = PLATEAU_GAIN) -> Peak | None:
    """Return the level with the highest median tok/s and whether throughput had stopped rising there.

    `tps_by_level`: concurrency -> spread of tok/s over the rounds (None: no valid run). None
    when no level has a valid run.
    """
    measured = sorted((c, s) for c, s in tps_by_level.items() if s is not None)
    if not measured:
        return None
    level, best = max(measured, key=lambda cs: cs[1].median)
    last_c, last = measured[-1]
    if level != last_c:
        return Peak(level, best, True, f"c={last_c} carried {last.median / best.median:.2f}× the peak")
    if len(measured) == 1:
        return Peak(level, best, False, "one level measured: cannot tell whether it still rises")
    prev_c, prev = measured[-2]
    gain = best.median / prev.median - 1.0 if prev.median else float("inf")
    if gain < plateau_gain:
        return Peak(level, best, True, f"+{gain:.0%} over c={prev_c} (< {plateau_gain:.0%}): flat")
    return Peak(level, best, False, f"still rising: +{gain:.0%} over c={prev_c}; try higher levels")


def peer_key(stacks: dict[str, dict], key: str) -> str | None:
    """The raw vLLM stack with the same number of front-end processes as `key` (None: none measured)."""
    n = stacks[key].get("front_ends")
    return next((k for k, s in stacks.items() if s.get("kind") == "vllm" and s.get("front_ends") == n), None)


def extra_per_1k_tokens(stack: dict, level: str, field: str) -> float | None:
    """Median over the valid runs at `level` of run[field] CPU seconds as ms per 1,000 output tokens."""
    vals = []
    for r in stack.get("levels", {}).get(level, {}).get("runs", []):
        tokens = r["output_tokens_per_s"] * r["duration_s"]
        if r["valid"] and r.get(field) is not None and tokens > 0:
            vals.append(1e6 * r[field] / tokens)
    return statistics.median(vals) if vals else None


def _tps_by_level(stack: dict, levels: list[int]) -> dict[int, Spread | None]:
    return {c: level_spreads(stack, str(c), "locust")["tps"] for c in levels}


def _level_table(doc: dict) -> list[str]:
    stacks, levels = doc["stacks"], doc["load"]["levels"]
    labels = [s["label"] for s in stacks.values()]
    out = ["| c | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for c in levels:
        cells = []
        for s in stacks.values():
            if "levels" not in s:
                cells.append(f"not measured: {s.get('error', '?')}" if c == levels[0] else "")
                continue
            lv = level_spreads(s, str(c), "locust")
            bad = [r for r in s["levels"].get(str(c), {}).get("runs", []) if not r["valid"]]
            note = f" ({len(bad)} run{'s' * (len(bad) > 1)} refused)" if bad else ""
            cells.append(f"{fmt_spread(lv['tps'])}{note}")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    return out


def _summary_rows(doc: dict) -> list[str]:
    stacks, levels = doc["stacks"], doc["load"]["levels"]
    head = ("| stack | processes | peak out tok/s (c) | stopped rising? | × raw vLLM, same count | × its own N=1 "
            "| TTFT p50 at peak (ms) | " + " | ".join(_GROUPS) + f" | **{FRONT_END}** | × raw vLLM's, same count "
            f"| busiest front-end process | {ENGINE} | load generator | start-up s |")
    out = [head, "|---|" + "---|" * (head.count("|") - 2)]
    peaks = {k: find_peak(_tps_by_level(s, levels)) for k, s in stacks.items() if "levels" in s}
    for k, s in stacks.items():
        p = peaks.get(k)
        if p is None:
            out.append(f"| {s['label']} | {s.get('front_ends', '–')} | not measured: {s.get('error') or 'no valid run'} |"
                       + " |" * (head.count("|") - 4))
            continue
        lv = str(p.level)
        peer = peer_key(stacks, k)
        peer_peak = peaks.get(peer) if peer else None
        own1 = next((q for q, t in stacks.items() if t.get("kind") == s.get("kind") and t.get("front_ends") == 1), None)
        own1_peak = peaks.get(own1) if own1 and own1 != k else None
        groups = cpu_per_1k_tokens(s, lv, grouped=True)
        # The front end of the peer at ITS peak: each stack's cost where it carries the most.
        peer_front = cpu_per_1k_tokens(stacks[peer], str(peer_peak.level), grouped=True).get(FRONT_END) \
            if peer_peak and peer != k else None
        ttft = level_spreads(s, lv, "locust")["ttft50"]
        cells = [
            s["label"], str(s.get("front_ends", "–")), f"**{fmt_spread(p.tps)}** ({p.level})",
            ("yes: " if p.flat else "no: ") + p.reason,
            fmt_ratio(ratio(p.tps.median, peer_peak.tps.median)) if peer_peak and peer != k else "–",
            fmt_ratio(ratio(p.tps.median, own1_peak.tps.median)) if own1_peak else "–",
            fmt_num(ttft.median if ttft else None, digits=1),
            *(fmt_num(groups.get(g)) if g in groups else "" for g in _GROUPS),
            f"**{fmt_num(groups.get(FRONT_END))}**",
            fmt_ratio(ratio(groups.get(FRONT_END), peer_front)) if peer_front else "–",
            fmt_num(extra_per_1k_tokens(s, lv, "busiest_front_end_cpu_s")),
            fmt_num(groups.get(ENGINE)),
            fmt_num(extra_per_1k_tokens(s, lv, "loadgen_cpu_s")),
            fmt_num(statistics.median(s["startup_runs_s"]), digits=1) if s.get("startup_runs_s") else "–",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render_capacity_report(doc: dict) -> str:
    """Return the report in Markdown: command, machine, tok/s per level, then capacity and CPU per stack."""
    load = doc["load"]
    lines = [
        *run_header(doc),
        f"Load: Locust closed loop at concurrency {', '.join(map(str, load['levels']))}, {load['duration_s']:g} s per run, "
        f"{load['input_len']} input / {load['output_len']} output tokens (ignore_eos); {load['rounds']} rounds, in each "
        "every stack in turn (the order rotates per round) started, run at every level and stopped: one stack up at a time. "
        f"Engine: max_num_seqs {doc['settings']['max_num_seqs']}. Median (min–max) over the rounds.",
        "",
        "### Output tokens/s per concurrency", "", *_level_table(doc), "",
        "### Capacity: the peak, and CPU ms per 1,000 output tokens there", "",
        "CPU by role group of the stack's own process tree (bench._measure.cpu_by_group; median over the rounds' "
        "runs at the peak level). The front end is every process but vLLM's engine core and worker. Load generator: "
        "the Locust process (on the same 2 cores); busiest front-end process: the one replica / API-server process that "
        "used the most (N front ends only help while no single one carries most of the work); start-up: start to first chat completion, median over the rounds.", "",
        *_summary_rows(doc), "",
    ]
    notes = [f"- {s['label']}: {n}" for s in doc["stacks"].values() for n in s.get("notes", [])]
    if notes:
        lines += ["Notes:", *notes, ""]
    return "\n".join(lines)
