"""Continuous batching as a pure step model: one latency model for the live simulator and the replay.

No clock, no asyncio: the caller owns time. Two callers drive it (DESIGN: "one latency model,
two clocks"):

    live  (serve_app.engines.sim_engine):  d = start_step() ──► await asyncio.sleep(d) ──► finish(1)
    replay (serve_app.autoscaling.des):    d = start_step() ──► event queue at now + d + (k-1)*steady
                                                               ──► finish(k)

One step, as vLLM's scheduler runs it:

    start_step():  admit from the waiting queue while running < max_num_seqs and the KV cache
                   holds prompt + output tokens of the next request (the head is admitted into an
                   empty batch whatever its size, so nothing waits forever)
                   duration = decode_base + per_seq * (running - 1)
                            + prefill_per_token * admitted prompt tokens + prefill_per_request * admitted
    finish(k):     k steps end; every running sequence got k tokens (its first at the end of the
                   step that admitted it); the ones that reached their output length leave and free
                   their KV reservation.

Between admissions every step of a batch costs the same (`steady_step_s`), so the replay can jump
`steps_to_next_finish()` steps at once instead of simulating each token: a sequence admitted at
step s with n output tokens ends at step s + n - 1, kept in a heap, so a jump is O(log batch).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["StepTiming", "Seq", "BatchModel"]


class StepTiming(Protocol):
    """The timing knobs a step needs; SimEngineConfig and autoscaling.latency.LatencyModel have them."""

    decode_step_base_s: float
    decode_step_per_seq_s: float
    prefill_s_per_token: float
    prefill_s_per_request: float
    max_num_seqs: int
    kv_capacity_tokens: int


@dataclass(slots=True, eq=False)
class Seq:
    """One request inside an engine. `tag` is the caller's (a live output queue, a replay index)."""

    prompt_tokens: int
    output_tokens: int
    arrival_s: float = 0.0
    tag: Any = None
    first_step: int = -1  # index of the step that admitted it (its first token ends that step)
    cancelled: bool = False
    key: int = -1  # admission number: unique within a BatchModel (id() could be reused after a free)

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens it reserves while running (vLLM may preempt instead; we reserve up front)."""
        return self.prompt_tokens + self.output_tokens


class BatchModel:
    """One engine's scheduler: a waiting queue, a running batch, the KV tokens reserved."""

    __slots__ = ("timing", "waiting", "running", "kv_used", "steps", "waiting_tokens", "_ends", "_admitted", "_cancelled",
                 "_base", "_per_seq", "_pre_tok", "_pre_req", "_max_seqs", "_kv_cap")

    def __init__(self, timing: StepTiming):
        self.timing = timing
        self._base, self._per_seq = float(timing.decode_step_base_s), float(timing.decode_step_per_seq_s)
        self._pre_tok, self._pre_req = float(timing.prefill_s_per_token), float(timing.prefill_s_per_request)
        self._max_seqs, self._kv_cap = int(timing.max_num_seqs), int(timing.kv_capacity_tokens)
        self.waiting: deque[Seq] = deque()
        self.running: dict[int, Seq] = {}  # seq.key -> seq, in admission order
        self.kv_used = 0
        self.steps = 0  # steps finished so far
        self.waiting_tokens = 0  # prompt tokens of the waiting queue (a signal the policy reads)
        self._ends: list[tuple[int, int]] = []  # heap of (last step index, seq.key)
        self._admitted = 0
        self._cancelled = 0  # running requests cancelled since the last step end

    # -- signals -------------------------------------------------------------------------------
    @property
    def kv_usage(self) -> float:
        """Reserved KV tokens / capacity (0-1; above 1 only for one oversized head request)."""
        return self.kv_used / self._kv_cap

    @property
    def idle(self) -> bool:
        """Nothing waiting, nothing running."""
        return not self.waiting and not self.running

    # -- the step --------------------------------------------------------------------------------
    def submit(self, seq: Seq) -> None:
        """Queue a request; it is admitted at the start of the next step."""
        self.waiting.append(seq)
        self.waiting_tokens += seq.prompt_tokens

    def can_admit(self) -> bool:
        """Whether the next start_step would admit the waiting head."""
        if not self.waiting or len(self.running) >= self._max_seqs:
            return False
        return not self.running or self.kv_used + self.waiting[0].kv_tokens <= self._kv_cap

    def start_step(self) -> tuple[float, list[Seq]]:
        """Admit what fits and begin a step; return its duration in seconds and the admitted requests.

        Call only when not idle. The admitted requests get their first token when this step ends.
        """
        admitted: list[Seq] = []
        prompt = 0
        while self.can_admit():
            seq = self.waiting.popleft()
            self.waiting_tokens -= seq.prompt_tokens
            if seq.cancelled:
                continue
            seq.first_step, seq.key = self.steps, self._admitted
            self._admitted += 1
            self.running[seq.key] = seq
            self.kv_used += seq.kv_tokens
            heapq.heappush(self._ends, (self.steps + max(1, seq.output_tokens) - 1, seq.key))
            admitted.append(seq)
            prompt += seq.prompt_tokens
        return self.steady_step_s() + self._pre_tok * prompt + self._pre_req * len(admitted), admitted

    def steady_step_s(self) -> float:
        """Duration of a step of the current batch that admits nobody."""
        return self._base + self._per_seq * max(0, len(self.running) - 1)

    def steps_to_next_finish(self) -> int:
        """Steps from the current one (counted) until the first running request ends; 1 if none runs."""
        self._drop_cancelled_ends()
        return self._ends[0][0] - self.steps + 1 if self._ends else 1

    def finish(self, k: int = 1) -> list[Seq]:
        """End the current step and k-1 more of the same batch; return the requests that completed.

        The caller must not let a completion fall inside the k steps (k <= steps_to_next_finish()):
        the batch, and so the step time, changes there.
        """
        self.steps += k
        done: list[Seq] = []
        ends = self._ends
        while ends and ends[0][0] < self.steps:
            _, key = heapq.heappop(ends)
            seq = self.running.pop(key, None)
            if seq is not None:
                self.kv_used -= seq.kv_tokens
                done.append(seq)
        # A request cancelled mid-run leaves at the end of the step it was cancelled in.
        if self._cancelled:
            self._cancelled = 0
            for key, seq in list(self.running.items()):
                if seq.cancelled:
                    del self.running[key]
                    self.kv_used -= seq.kv_tokens
        return done

    def cancel(self, seq: Seq) -> None:
        """Drop a request (its client went away): skipped if still waiting, freed at the next step end if running."""
        if not seq.cancelled:
            seq.cancelled = True
            if seq.key in self.running:
                self._cancelled += 1

    def tokens_of(self, seq: Seq) -> int:
        """Tokens a running request has received so far."""
        return max(0, self.steps - seq.first_step) if seq.first_step >= 0 else 0

    def _drop_cancelled_ends(self) -> None:
        ends = self._ends
        while ends and ends[0][1] not in self.running:
            heapq.heappop(ends)
