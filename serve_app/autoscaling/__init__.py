"""Queue-depth autoscaling: the pure policy, its audit trail and the offline replay.

Importing this package imports neither Ray nor vLLM. The Serve adapter, the one Ray importer,
is imported by its full name: `serve_app.autoscaling.serve_adapter`.
"""

from __future__ import annotations

from serve_app.autoscaling.audit import EVENT, AuditLog, DecisionRecord, decision_record, format_table, read_records
from serve_app.autoscaling.policy import Clamp, Decision, Observation, PolicyState, WindowSample, decide, due
from serve_app.autoscaling.replay import TracePoint, load_trace, parse_trace  # replay() lives in .replay

__all__ = [
    "Observation", "PolicyState", "WindowSample", "Clamp", "Decision", "decide", "due",
    "EVENT", "AuditLog", "DecisionRecord", "decision_record", "format_table", "read_records",
    "TracePoint", "load_trace", "parse_trace",
]
