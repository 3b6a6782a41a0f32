"""The one JSONL reader of loadtest's inputs (arrival traces, prompt datasets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from loadtest.errors import LoadTestError

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path, *, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSONL file.

    `what` names the file's role in errors ("trace", "dataset"). Raises LoadTestError naming the
    file, the line and the fix when the file cannot be read or a line is not a JSON object.
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text().splitlines()
    except OSError as e:
        raise LoadTestError(f"{what} {p}: cannot read ({e.strerror or e}); pass an existing JSONL file") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoadTestError(f"{what} {p} line {n}: not JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise LoadTestError(f"{what} {p} line {n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj
