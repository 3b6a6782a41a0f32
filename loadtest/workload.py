"""The requests of a plan: request i is the same on every run with the same seed, on any process.

Pure: no locust, no clock (the caller passes elapsed time in). A `Workload` is one locust
process's view of the plan: closed-loop processes take request indices index, index+count, ...;
open-loop processes take their share of the arrival schedule (see `loadtest.arrivals`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from loadtest.arrivals import ArrivalCursor, TraceRow, load_trace, poisson_times
from loadtest.plan import LoadPlan
from loadtest.prompts import DatasetEntry, load_dataset, synthetic_prompt

__all__ = ["LLMRequest", "Workload", "ENDPOINT_PATHS"]

ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True)
class LLMRequest:
    """One request to send: what, to which model, and (open loop) when."""

    index: int
    """Global request index (arrival index in open loop)."""
    model: str
    messages: tuple[dict, ...]
    """Chat messages; the completions endpoint sends their text joined as the prompt."""
    input_tokens: int
    """Planned prompt length (approximate for synthetic and dataset text)."""
    max_tokens: int
    due_s: float | None = None
    """Open loop: when to send, in seconds from the test start; None in closed loop."""

    def body(self, endpoint: str, *, ignore_eos: bool) -> dict:
        """Return the streaming OpenAI request body; usage is asked for in the last chunk."""
        body: dict = {"model": self.model, "max_tokens": self.max_tokens, "stream": True,
                      "stream_options": {"include_usage": True}}
        if ignore_eos:
            body["ignore_eos"] = True  # vLLM extension: generate exactly max_tokens
        if endpoint == "chat":
            body["messages"] = list(self.messages)
        else:
            body["prompt"] = "\n".join(str(m.get("content", "")) for m in self.messages)
        return body


class Workload:
    """One process's requests for `plan`: process `index` of `count` (0 of 1 when local)."""

    def __init__(self, plan: LoadPlan, *, index: int = 0, count: int = 1,
                 dataset: tuple[DatasetEntry, ...] | None = None, trace: tuple[TraceRow, ...] | None = None):
        self.plan, self.index, self.count = plan, index, count
        self.dataset = dataset if dataset is not None else (load_dataset(plan.dataset_path) if plan.dataset_path else None)
        shape = plan.shape
        self.trace: tuple[TraceRow, ...] | None = None
        self._cursor: ArrivalCursor | None = None
        if shape.kind == "trace":
            self.trace = trace if trace is not None else load_trace(shape.path, time_scale=shape.time_scale)
            self._cursor = ArrivalCursor((r.t_s for r in self.trace), index=index, count=count, until_s=plan.duration_s)
        elif shape.kind == "poisson":
            self._cursor = ArrivalCursor(poisson_times(shape.rate_rps, plan.seed), index=index, count=count,
                                         until_s=plan.duration_s)
        self._closed = itertools.count(index, count)

    @property
    def open_loop(self) -> bool:
        """True when an arrival schedule, not the users, sets the pace."""
        return self._cursor is not None

    @property
    def arrivals_claimed(self) -> int | None:
        """Open loop: arrivals this process has taken from its schedule so far; None in closed loop."""
        return self._cursor.claimed if self._cursor is not None else None

    def next_request(self, elapsed_s: float) -> LLMRequest | None:
        """Return this process's next request, or None when it has nothing more to send.

        Closed loop: None once `elapsed_s` passes the plan's duration. Open loop: the next
        scheduled arrival (possibly already due), None after the last one.
        """
        if self._cursor is not None:
            nxt = self._cursor.claim()
            if nxt is None:
                return None
            i, due = nxt
            return self.request(i, due_s=due)
        if self.plan.duration_s is not None and elapsed_s >= self.plan.duration_s:
            return None
        return self.request(next(self._closed))

    def request(self, i: int, *, due_s: float | None = None) -> LLMRequest:
        """Return request `i`, a function of (seed, i) and the trace/dataset only."""
        plan = self.plan
        rng = random.Random(f"{plan.seed}:request:{i}")
        row = self.trace[i] if self.trace is not None and i < len(self.trace) else None
        n_in = (row and row.input_tokens) or plan.input_tokens.sample(rng)
        n_out = (row and row.output_tokens) or plan.output_tokens.sample(rng)
        model = row.model if row is not None and row.model in plan.models else plan.models[i % len(plan.models)]
        if self.dataset:
            entry = self.dataset[i % len(self.dataset)]
            return LLMRequest(i, model, entry.messages, entry.approx_tokens, entry.output_tokens or n_out, due_s)
        messages = ({"role": "user", "content": synthetic_prompt(n_in, rng)},)
        return LLMRequest(i, model, messages, n_in, n_out, due_s)
