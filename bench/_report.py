"""Render the serving-overhead results (the dict serving_overhead writes as results.json) as Markdown tables.

Pure: reads the dict, never the machine. Only valid runs (no failed request, no burst)
count towards a median; a level with a refused run says so in its row.
"""

from __future__ import annotations

import statistics

from bench._measure import BACKGROUND, ENGINE, FRONT_END, ROLE_GROUPS, Spread, cpu_by_group, fmt_num, fmt_ratio, fmt_spread, per_1k_tokens, ratio, spread, run_header

__all__ = ["render_report", "level_spreads", "cpu_per_1k_tokens", "front_end_rows", "PEERS"]

PEERS = (("vllm", "raw vLLM"), ("rayllm", "Ray Serve LLM"))
OURS = ("fleetserve", "fleetserve-proxy", "fleetserve-tput", "fleetserve-dashboard")


def level_spreads(stack: dict, level: str, tool: str) -> dict[str, Spread | None]:
    """Median/min/max over the valid repetitions of `tool` at `level`: tok/s, TTFT p50, TTFT p95."""
    runs = [r for r in stack.get("levels", {}).get(level, {}).get("runs", []) if r["tool"] == tool and r["valid"]]
    return {"tps": spread(r["output_tokens_per_s"] for r in runs),
            "ttft50": spread(r["ttft_p50_ms"] for r in runs),
            "ttft95": spread(r["ttft_p95_ms"] for r in runs)}


def _refused(stack: dict, level: str) -> list[str]:
    runs = stack.get("levels", {}).get(level, {}).get("runs", [])
    return [f"{r['tool']}: " + ((r.get("check") or {}).get("reason") or f"{r['requests_failed']} failed")
            for r in runs if not r["valid"]]


def _median(s: Spread | None) -> float | None:
    return s.median if s else None


def _levels(doc: dict) -> list[str]:
    return [str(c) for c in doc["load"]["levels"]]


def _throughput_tables(doc: dict) -> list[str]:
    stacks = doc["stacks"]
    out = ["| c | stack | Locust out tok/s | Locust TTFT p50 ms | Locust TTFT p95 ms | vllm bench out tok/s "
           "| vllm bench TTFT p50 ms | vllm bench TTFT p95 ms | Locust / vllm bench tok/s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for lv in _levels(doc):
        for key, s in stacks.items():
            if "levels" not in s:
                out.append(f"| {lv} | {s['label']} | not measured: {s.get('error') or 'streams burst'} | | | | | | |")
                continue
            lo, vb = level_spreads(s, lv, "locust"), level_spreads(s, lv, "vllm-bench")
            refused = _refused(s, lv)
            note = f" (refused: {'; '.join(refused)})" if refused else ""
            out.append(f"| {lv} | {s['label']}{note} | {fmt_spread(lo['tps'])} | {fmt_spread(lo['ttft50'], digits=1)} "
                       f"| {fmt_spread(lo['ttft95'], digits=1)} | {fmt_spread(vb['tps'])} | {fmt_spread(vb['ttft50'], digits=1)} "
                       f"| {fmt_spread(vb['ttft95'], digits=1)} | {fmt_ratio(ratio(_median(lo['tps']), _median(vb['tps'])))} |")
    return out


def _ratio_tables(doc: dict) -> list[str]:
    stacks = doc["stacks"]
    ours = [k for k in OURS if k in stacks]
    peers = [(k, name) for k, name in PEERS if k in stacks]
    if not ours or not peers:
        return []
    head = "| c | stack |"
    sep = "|---|---|"
    for _, name in peers:
        head += f" tok/s / {name} (Locust) | tok/s / {name} (vllm bench) | TTFT p50 − {name} (vllm bench, ms) |"
        sep += "---|---|---|"
    out = [head, sep]
    for lv in _levels(doc):
        for k in ours:
            row = f"| {lv} | {stacks[k]['label']} |"
            for pk, _ in peers:
                cells = []
                for tool in ("locust", "vllm-bench"):
                    a, b = level_spreads(stacks[k], lv, tool), level_spreads(stacks[pk], lv, tool)
                    cells.append(fmt_ratio(ratio(_median(a["tps"]), _median(b["tps"]))))
                a, b = level_spreads(stacks[k], lv, "vllm-bench"), level_spreads(stacks[pk], lv, "vllm-bench")
                d = None if not (a["ttft50"] and b["ttft50"]) else a["ttft50"].median - b["ttft50"].median
                cells.append("–" if d is None else f"{d:+.1f}")
                row += " " + " | ".join(cells) + " |"
            out.append(row)
    return out


def _startup_table(doc: dict) -> list[str]:
    stacks = doc["stacks"]
    base = stacks.get("vllm", {})
    out = ["| stack | start → first chat completion (s) | × raw vLLM | idle PSS (GiB) | processes | × raw vLLM "
           "| PSS after load (GiB) | stop (s) |", "|---|---|---|---|---|---|---|---|"]
    for s in stacks.values():
        pss = s.get("idle_pss_kib")
        after = s.get("after_load_pss_kib")
        runs = s.get("startup_runs_s") or []
        spread = f" ({min(runs):.1f}–{max(runs):.1f})" if len(runs) > 1 else ""
        out.append(f"| {s['label']} | {fmt_num(s.get('startup_s'), digits=1)}{spread} "
                   f"| {fmt_ratio(ratio(s.get('startup_s'), base.get('startup_s')))} "
                   f"| {fmt_num(pss / 2**20 if pss else None, digits=2)} | {s.get('idle_processes', '–')} "
                   f"| {fmt_ratio(ratio(pss, base.get('idle_pss_kib')))} "
                   f"| {fmt_num(after / 2**20 if after else None, digits=2)} | {fmt_num(s.get('stop_s'), digits=1)} |")
    return out


def _probe_table(doc: dict) -> list[str]:
    out = ["| stack | probe streams (idle, 64 tokens) | TTFT p50 ms | reads carrying tokens | largest read | "
           "gap between reads p50 / max ms | verdict |", "|---|---|---|---|---|---|---|"]
    for s in doc["stacks"].values():
        ps = s.get("probes") or []
        if not ps:
            continue

        def med(key):
            vals = [p[key] for p in ps if p.get(key) is not None]
            return statistics.median(vals) if vals else None

        verdict = "ok" if s.get("streams_ok") else "BURST: refused"
        batched = f" (grouped every {s['time_batched_ms']:g} ms by design)" if s.get("time_batched_ms") else ""
        out.append(f"| {s['label']} | {len(ps)} | {fmt_num(med('ttft_ms'), digits=1)} | {fmt_num(med('reads_with_tokens'))} "
                   f"| {fmt_num(100 * (med('max_read_share') or 0))} % | {fmt_num(med('gap_p50_ms'), digits=1)} / "
                   f"{fmt_num(med('gap_max_ms'), digits=1)} | {verdict}{batched} |")
    return out


def cpu_per_1k_tokens(stack: dict, level: str, *, grouped: bool = False) -> dict[str, float]:
    """CPU ms per 1,000 output tokens by process role: median over the valid Locust runs at `level`.

    `grouped`: by role group instead (bench._measure.cpu_by_group), summed within each run first.
    """
    per_run = []
    for r in stack.get("levels", {}).get(level, {}).get("runs", []):
        tokens = r["output_tokens_per_s"] * r["duration_s"]
        if r["tool"] == "locust" and r["valid"] and r.get("cpu_s_by_role") and tokens > 0:
            by = cpu_by_group(r["cpu_s_by_role"]) if grouped else r["cpu_s_by_role"]
            per_run.append(per_1k_tokens(by, tokens))
    roles = {role for run in per_run for role in run}
    return {role: statistics.median(run.get(role, 0.0) for run in per_run) for role in roles}


def _role_table(labels: list[str], values: list[dict[str, float]], *, scale: float = 1.0, digits: int = 0) -> list[str]:
    """Roles as rows, stacks as columns, a total row; empty when there is nothing to show."""
    roles = sorted({r for v in values for r in v}, key=lambda r: -max(v.get(r, 0.0) for v in values))
    if not roles:
        return []
    out = ["| process role | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for role in roles:
        out.append(f"| {role} | " + " | ".join(fmt_num(v[role] * scale, digits=digits) if role in v else ""
                                                for v in values) + " |")
    out.append("| **total** | " + " | ".join(f"**{fmt_num(sum(v.values()) * scale, digits=digits)}**" for v in values) + " |")
    return out


def _cpu_table(doc: dict) -> list[str]:
    level = str(max(doc["load"]["levels"]))
    stacks = [s for s in doc["stacks"].values() if "levels" in s]
    return _role_table([s["label"] for s in stacks], [cpu_per_1k_tokens(s, level) for s in stacks])


_GROUP_COLUMNS = (*(g for _, g in ROLE_GROUPS if g != ENGINE), BACKGROUND)


def front_end_rows(doc: dict) -> list[str]:
    """Per level and stack: front-end CPU ms per 1,000 output tokens by role group, against raw vLLM's front end.

    The front end is every process but vLLM's engine core and worker (bench._measure.cpu_by_group);
    for raw vLLM that is its API server (and whatever little else its tree runs).
    """
    stacks = {k: s for k, s in doc["stacks"].items() if "levels" in s}
    out = ["| c | stack | " + " | ".join(_GROUP_COLUMNS) + f" | **{FRONT_END}** | × raw vLLM's front end | {ENGINE} |",
           "|---|---|" + "---|" * (len(_GROUP_COLUMNS) + 3)]
    for lv in _levels(doc):
        groups = {k: cpu_per_1k_tokens(s, lv, grouped=True) for k, s in stacks.items()}
        base = groups.get("vllm", {}).get(FRONT_END)
        for k, g in groups.items():
            if not g:  # no valid Locust run with CPU figures at this level
                continue
            cells = " | ".join(fmt_num(g.get(c)) if c in g else "" for c in _GROUP_COLUMNS)
            out.append(f"| {lv} | {stacks[k]['label']} | {cells} | **{fmt_num(g[FRONT_END])}** "
                       f"| {fmt_ratio(ratio(g[FRONT_END], base))} | {fmt_num(g.get(ENGINE))} |")
    return out if len(out) > 2 else []


def _pss_table(doc: dict) -> list[str]:
    stacks = [s for s in doc["stacks"].values() if s.get("idle_pss_kib_by_role")]
    return _role_table([s["label"] for s in stacks], [s["idle_pss_kib_by_role"] for s in stacks], scale=1 / 1024)


def render_report(doc: dict) -> str:
    """Return the whole report: command, machine, then the tables."""
    load = doc["load"]
    lines = [
        *run_header(doc),
        f"Load: closed loop at concurrency {', '.join(map(str, load['levels']))}; {load['reps']} repetitions per level "
        f"and load generator (Locust {load['duration_s']:g} s each; vllm bench sized to the same time); "
        f"{load['input_len']} input / {load['output_len']} output tokens, ignore_eos. Median (min–max) of repetitions.",
        "",
        "### Output tokens/s and TTFT", "", *_throughput_tables(doc), "",
    ]
    ratios = _ratio_tables(doc)
    if ratios:
        lines += ["### fleetserve against its peers (medians)", "", *ratios, ""]
    cpu = _cpu_table(doc)
    if cpu:
        lines += [f"### Where the CPU goes at concurrency {max(load['levels'])}: CPU ms per 1,000 output tokens "
                  "(median of the Locust runs; the load generator not included)", "",
                  "vLLM's engine core and worker busy-wait for work, so their figures grow when steps come slower; "
                  "the front-end rows (HTTP, OpenAI layer, Serve) are work done per request and token.", "", *cpu, ""]
    front = front_end_rows(doc)
    if front:
        lines += ["### Front-end CPU per 1,000 output tokens, by role group (median of the Locust runs; CPU ms)", "",
                  "The front end is every process of the stack but vLLM's engine core and worker: for raw vLLM its API "
                  "server; for fleetserve the replica (vLLM's OpenAI app inside Serve), HAProxy, and Ray/Serve's "
                  "controller, daemons and driver.", "", *front, ""]
    lines += ["### Start-up and memory", "", *_startup_table(doc), ""]
    pss = _pss_table(doc)
    if pss:
        lines += ["Idle PSS by process role (MiB):", "", *pss, ""]
    lines += ["### Stream check (refuse bursting streams)", "", *_probe_table(doc), ""]
    notes = [f"- {s['label']}: {n}" for s in doc["stacks"].values() for n in s.get("notes", [])]
    if notes:
        lines += ["Notes:", *notes, ""]
    return "\n".join(lines)
