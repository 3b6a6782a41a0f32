"""Audit trail of autoscaling decisions: one JSON log line each, a bounded history, a readable table.

Pure (pydantic, json, logging). A decision travels as a typed `DecisionRecord`; it becomes JSON
only at the edges (the log line, the audit store behind the HTTP endpoint, a JSONL file), and
`read_records` turns JSON back into records, so the gauges and `fleetserve autoscaler explain`
read fields, never dict keys.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serve_app.autoscaling.policy import Clamp, Decision, Mode, Observation

__all__ = ["EVENT", "DecisionRecord", "AuditLog", "decision_record", "read_records", "format_table"]

EVENT = "fleetserve.autoscaler.decision"
_log = logging.getLogger("fleetserve.autoscaler")


class DecisionRecord(BaseModel):
    """One decision as recorded: time, inputs, raw wish, clamps in order, result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Literal["fleetserve.autoscaler.decision"] = Field(EVENT, description="Marks the record in mixed logs.")
    model: str = Field(..., description="The model (deployment) decided for.")
    time_s: float = Field(..., description="The observation's time in seconds (epoch live, trace time in replays).")
    inputs: Observation = Field(..., description="What the policy saw; serialized without its now_s (that is time_s).")
    backlog: float = Field(..., description="Work waiting for a slot, in `unit`, rounded to 3 decimals.")
    unit: Literal["requests", "tokens"] = Field(..., description="Unit of backlog and of the policy's target.")
    queue_need: int = Field(..., description="Replicas the backlog asks for.")
    busy_need: int = Field(..., description="Replicas the running work needs (drain-safe floor).")
    running_per_replica: float | None = Field(..., description="Requests one full replica runs, as queue_need assumed.")
    raw_desired: int = Field(..., description="max(queue_need, busy_need), before any clamp.")
    mode: Mode = Field(..., description="normal, panic or wake.")
    clamps: tuple[Clamp, ...] = Field(..., description="Every rule that changed the count, in the order applied.")
    previous_replicas: int = Field(..., description="The target in force before this decision.")
    target_replicas: int = Field(..., description="The target this decision chose.")
    direction: Literal["up", "down", "hold"] = Field(..., description="Whether the decision scaled up, down or held.")

    @model_validator(mode="before")
    @classmethod
    def _inputs_time(cls, data: Any) -> Any:
        # The JSON form leaves now_s out of inputs (it is time_s); put it back when reading.
        if isinstance(data, dict) and isinstance(data.get("inputs"), dict) and "now_s" not in data["inputs"]:
            data = {**data, "inputs": {**data["inputs"], "now_s": data.get("time_s")}}
        return data

    @classmethod
    def from_decision(cls, decision: Decision, *, model: str) -> "DecisionRecord":
        """Record `decision` for `model`."""
        obs = decision.observation
        return cls(
            model=model, time_s=obs.now_s, inputs=obs, backlog=round(decision.backlog, 3), unit=decision.unit,
            queue_need=decision.queue_need, busy_need=decision.busy_need,
            running_per_replica=None if decision.running_per_replica is None else round(decision.running_per_replica, 3),
            raw_desired=decision.raw_desired, mode=decision.mode, clamps=decision.clamps,
            previous_replicas=decision.previous_replicas, target_replicas=decision.target_replicas,
            direction=decision.direction,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Return the JSON-able form (the log line, the HTTP endpoint, JSONL files)."""
        return self.model_dump(mode="json", exclude={"inputs": {"now_s"}})

    def to_json(self) -> str:
        """Return the record as one compact JSON line."""
        return json.dumps(self.to_json_dict(), separators=(",", ":"))


def decision_record(decision: Decision, *, model: str) -> DecisionRecord:
    """Return the record of one decision (see DecisionRecord.from_decision)."""
    return DecisionRecord.from_decision(decision, model=model)


class AuditLog:
    """The last `size` decisions of one model, each also logged as one JSON line.

    `on_record` (optional) is called with every record: the Serve adapter uses it to set metrics
    and to publish the record where the HTTP endpoint can read it.
    """

    def __init__(
        self,
        model: str,
        *,
        size: int = 512,
        logger: logging.Logger | None = None,
        on_record: Callable[[DecisionRecord], None] | None = None,
    ):
        self.model = model
        self.size = size
        self._records: deque[DecisionRecord] = deque(maxlen=size)
        self._logger = logger or _log
        self._on_record = on_record
        self._last_reasons: tuple | None = None

    def record(self, decision: Decision) -> DecisionRecord:
        """Keep, log and publish one decision; return its record."""
        rec = decision_record(decision, model=self.model)
        self.add(rec)
        # INFO when the target moves or the reasons change; a hold for the same reasons as the
        # last decision goes to DEBUG, so INFO reads as a story even under a long overload.
        reasons = (rec.mode, tuple(c.name for c in rec.clamps))
        level = logging.INFO if rec.direction != "hold" or reasons != self._last_reasons else logging.DEBUG
        self._last_reasons = reasons
        self._logger.log(level, rec.to_json())
        if self._on_record is not None:
            self._on_record(rec)
        return rec

    def add(self, record: DecisionRecord) -> None:
        """Keep an already-built record (e.g. read back from JSON)."""
        self._records.append(record)

    def history(self, last: int | None = None) -> list[DecisionRecord]:
        """Return the kept records, oldest first; only the newest `last` when given."""
        records = list(self._records)
        return records[-last:] if last else records

    def to_dict(self, last: int | None = None) -> dict[str, Any]:
        """Return what the HTTP endpoint serves: model, capacity and the records as JSON."""
        records = self.history(last)
        return {"model": self.model, "history_size": self.size, "count": len(records),
                "decisions": [r.to_json_dict() for r in records]}

    def __len__(self) -> int:
        return len(self._records)


def read_records(text: str) -> list[DecisionRecord]:
    """Parse decision records from an endpoint's JSON body, a JSON list, or JSONL / log lines.

    Log lines may carry a prefix before the JSON object (Ray's controller log does); lines that are
    not decision records are skipped. Raises ValueError when nothing parses.
    """
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = None  # JSONL: one object per line
        if isinstance(data, dict):
            return [_typed(r) for r in data.get("decisions", [data]) if _is_record(r)]
        if isinstance(data, list):
            return [_typed(r) for r in data if _is_record(r)]
    out: list[DecisionRecord] = []
    for line in stripped.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            rec = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if _is_record(rec):
            out.append(_typed(rec))
    if not out and stripped:
        raise ValueError("no autoscaler decision records found (expected JSON, JSONL or log lines with "
                         f'"event": "{EVENT}")')
    return out


def _is_record(r: Any) -> bool:
    return isinstance(r, dict) and r.get("event") == EVENT


def _typed(r: dict[str, Any]) -> DecisionRecord:
    try:
        return DecisionRecord.model_validate(r)
    except ValidationError as e:
        raise ValueError(f"a decision record does not match DecisionRecord (written by another version?): {e}") from e


def format_table(records: Iterable[DecisionRecord], *, why: bool = False, changes_only: bool = False) -> str:
    """Render records as a fixed-width table, one decision a row.

    Consecutive decisions that read the same (same counts, backlog, mode and clamps) collapse into
    one row with a time range and a count. `why` adds each clamp's reason under its row;
    `changes_only` keeps only decisions that moved the target.
    """
    header = ("time", "model", "replicas", "raw", "need q/b", "backlog", "mode", "clamps")
    groups: list[tuple[tuple[str, ...], float, float, int, list[str]]] = []  # row, first, last, count, notes
    for rec in records:
        if changes_only and rec.direction == "hold":
            continue
        starting = rec.inputs.starting_replicas
        replicas = f"{rec.previous_replicas}->{rec.target_replicas}"
        if starting:
            replicas += f" ({starting} starting)"
        unit = "tok" if rec.unit == "tokens" else "req"
        clamps = ", ".join(f"{c.name} {c.before}->{c.after}" for c in rec.clamps) or "-"
        row = (rec.model, replicas, str(rec.raw_desired), f"{rec.queue_need}/{rec.busy_need}",
               f"{rec.backlog:g} {unit}", rec.mode, clamps)
        notes = [f"{c.name}: {c.why}" for c in rec.clamps] if why else []
        if groups and groups[-1][0] == row and rec.direction == "hold":
            g = groups[-1]
            groups[-1] = (row, g[1], rec.time_s, g[3] + 1, notes or g[4])
        else:
            groups.append((row, rec.time_s, rec.time_s, 1, notes))
    if not groups:
        return "(no decisions)"
    rows = []
    for row, first, last, count, notes in groups:
        when = _fmt_time(first) if count == 1 else f"{_fmt_time(first)}..{_fmt_time(last)} x{count}"
        rows.append(((when, *row), notes))
    widths = [max(len(r[i]) for r in [header, *(r for r, _ in rows)]) for i in range(len(header) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1]]
    for row, notes in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        lines.extend(" " * 4 + "- " + note for note in notes)
    return "\n".join(lines)


def _fmt_time(t: float) -> str:
    # Serve passes wall-clock epoch seconds; replays start near 0.
    if t > 1e9:
        return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 10)}Z"
    return f"{t:.1f}"
