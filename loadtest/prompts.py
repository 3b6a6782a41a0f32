"""Prompt text: synthesised locally from a seeded RNG, or read from a JSONL dataset file.

Pure: no locust, no network. Synthetic prompts are words from a fixed list of short, common
English and Python words, each about one token in byte-level BPE tokenizers (the tiny models'
tokenizer is trained on Python source), so a prompt of N words is roughly N tokens. The exact
prompt length is whatever the server's tokenizer says; the results record the server's
`usage.prompt_tokens` when it sends usage. Every prompt is different (random words), so
benchmarks don't measure prefix-cache hits unless a dataset asks for them.

Dataset format, one JSON object per line:
    {"prompt": "text"}                                 (or)
    {"messages": [{"role": "user", "content": "..."}]}
with optional "output_tokens" (int) to fix that request's max_tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from loadtest.errors import LoadTestError
from loadtest.jsonl import read_jsonl

__all__ = ["DatasetEntry", "synthetic_prompt", "load_dataset", "WORDS"]

WORDS: tuple[str, ...] = tuple(
    """the of and to in is for that with as on it be by this are from at or not an if return self
    def class import none true false value name data list dict file line time type test path text
    key set get new old end one two all any can will use run add out map len str int max min sum
    first last next open read write call make find show keep move turn load save send copy sort""".split()
)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset request: chat messages (a prompt becomes one user message) and an optional output length."""

    messages: tuple[dict, ...]
    output_tokens: int | None

    @property
    def prompt(self) -> str:
        """The text of all messages joined, for the completions endpoint."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)

    @property
    def approx_tokens(self) -> int:
        """Whitespace-separated words: a rough token count, for the plan only."""
        return max(1, len(self.prompt.split()))


def synthetic_prompt(n_tokens: int, rng: random.Random) -> str:
    """Return about `n_tokens` tokens of text: `n_tokens` words drawn from WORDS."""
    return " ".join(rng.choices(WORDS, k=max(1, n_tokens)))


def load_dataset(path: str | Path) -> tuple[DatasetEntry, ...]:
    """Read a JSONL dataset (see module doc); raise LoadTestError naming the file, line and fix."""
    p = Path(path).expanduser()
    out: list[DatasetEntry] = []
    for n, row in read_jsonl(p, what="dataset"):
        if isinstance(row.get("messages"), list) and row["messages"]:
            messages = tuple(dict(m) for m in row["messages"])
        elif isinstance(row.get("prompt"), str):
            messages = ({"role": "user", "content": row["prompt"]},)
        else:
            raise LoadTestError(f"dataset {p} line {n}: needs a 'prompt' string or a non-empty 'messages' list")
        out_tokens = row.get("output_tokens")
        if out_tokens is not None and (not isinstance(out_tokens, int) or out_tokens < 1):
            raise LoadTestError(f"dataset {p} line {n}: output_tokens={out_tokens!r} must be a positive integer")
        out.append(DatasetEntry(messages, out_tokens))
    if not out:
        raise LoadTestError(f"dataset {p} has no requests; add JSONL lines with a 'prompt'")
    return tuple(out)
