"""Replay against a live run: start-ups measured from the live timeline, and replica-count agreement.

Pure. Shared by bench/replay_fidelity.py and the live autoscaling test.

    live samples (t, target, running)  ──► measured_startups: target up at t_a, the k-th new
                                            RUNNING replica at t_b, start-up t_b - t_a (FIFO)
    live samples + replay timeline     ──► agreement: share of live samples where the replay's
                                            running replicas are within one of the live count
    live requests + latency model      ──► unloaded_overhead_s: what the HTTP path adds to a request
                                            that met an idle fleet (ReplaySetup.ingress_s)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from serve_app.autoscaling.des import ReplayResult
from serve_app.autoscaling.latency import LatencyModel

__all__ = ["measured_startups", "Agreement", "agreement", "unloaded_overhead_s"]


def measured_startups(samples: Sequence[tuple[float, int, int]]) -> list[float]:
    """Seconds from each target increase to the matching replica running; samples are (t, target, running)."""
    asks: list[float] = []
    out: list[float] = []
    if not samples:
        return out
    _, prev_target, prev_running = samples[0]
    for t, target, running in samples[1:]:
        asks += [t] * max(0, target - prev_target)
        for _ in range(max(0, running - prev_running)):
            if asks:
                out.append(round(t - asks.pop(0), 3))
        prev_target, prev_running = target, running
    return out


@dataclass(frozen=True)
class Agreement:
    """How the replay's running replicas track the live ones."""

    samples: int
    within_one: float  # share of live samples with |live - replay| <= 1
    exact: float
    live_peak: int
    replay_peak: int
    pairs: tuple[tuple[float, int, int], ...]  # (t from the live origin, live, replay)


def agreement(live: Sequence[tuple[float, int]], replay: ReplayResult, *, offset_s: float, until_s: float) -> Agreement:
    """Compare live (t, running) samples, t from the live origin, with the replay shifted by `offset_s`.

    offset_s: live time of the replay's t=0 (the first request's send time); samples after `until_s`
    (the last request's end) are left out, where both fleets only wait out their windows.
    """
    rep = [(t + offset_s, nrun) for t, _q, _w, _r, nrun, _s, _tgt in replay.timeline]
    pairs = []
    j = 0
    for t, running in live:
        if t < offset_s or t > until_s or not rep:
            continue
        while j + 1 < len(rep) and rep[j + 1][0] <= t:
            j += 1
        pairs.append((round(t, 2), running, rep[j][1]))
    n = max(1, len(pairs))
    return Agreement(
        samples=len(pairs), within_one=sum(abs(a - b) <= 1 for _, a, b in pairs) / n,
        exact=sum(a == b for _, a, b in pairs) / n, live_peak=max((a for _, a, _ in pairs), default=0),
        replay_peak=max((b for _, _, b in pairs), default=0), pairs=tuple(pairs))


def unloaded_overhead_s(records: Sequence[Mapping[str, Any]], latency: LatencyModel) -> float:
    """Median live TTFT beyond the model's, over requests alone in flight until their first token; 0 if none was.

    records: loadtest's requests.jsonl rows (start_unix_s, ttft_ms, e2e_ms, input_tokens). Such a
    request met an idle replica, so the model's TTFT is one step that admits it; the rest is the
    proxy, ingress and replica hops the replay does not simulate. Only these requests are used:
    the loaded ones, whose TTFT is queueing, are what a fidelity check compares and must not tune it.
    """
    ok = [r for r in records if r.get("ok", True) and r.get("ttft_ms") is not None]
    spans = [(r["start_unix_s"], r["start_unix_s"] + r["e2e_ms"] / 1e3) for r in records]
    gaps = []
    for r in ok:
        t, first = r["start_unix_s"], r["start_unix_s"] + r["ttft_ms"] / 1e3
        if sum(a < first and t < b for a, b in spans) == 1:  # no other request overlaps [send, first token]
            lone = (latency.decode_step_base_s + latency.prefill_s_per_token * int(r.get("input_tokens") or 0)
                    + latency.prefill_s_per_request)
            gaps.append(r["ttft_ms"] / 1e3 - lone)
    return max(0.0, statistics.median(gaps)) if gaps else 0.0
