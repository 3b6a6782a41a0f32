"""Replay against a live run: start-ups measured from the live timeline, and replica-count agreement.

Pure. Shared by bench/replay_fidelity.py and the live autoscaling test.

    live samples (t, target, running)  ──► measured_startups: target up at t_a, the k-th new
                                            RUNNING replica at t_b, start-up t_b - t_a (FIFO)
    live samples + replay timeline     ──► agreement: share of live samples where the replay's
                                            running replicas are within one of the live count
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from serve_app.autoscaling.des import ReplayResult

__all__ = ["measured_startups", "Agreement", "agreement"]


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
