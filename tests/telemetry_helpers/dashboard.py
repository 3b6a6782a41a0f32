"""The metric names a Grafana dashboard queries, read from its PromQL expressions.

Enough PromQL for our own dashboard, and strict where a loose reading would hide a name: a
selector by `__name__` (a regex the scrape check could not verify) is an error, not skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["dashboard_exprs", "label_names", "metric_names", "queried_metrics"]

# PromQL keywords and aggregation modifiers that look like identifiers but name no metric.
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                       "and", "or", "unless", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects, e.g. {'ray_vllm_time_to_first_token_seconds_bucket'}.

    Raises ValueError for a `__name__` selector: the dashboard names each metric literally.
    """
    if "__name__" in expr:
        raise ValueError(f"selects metrics by __name__ (name each metric literally): {expr}")
    # Strings first (label values and label_replace's arguments), then label matchers, ranges
    # and grouping label lists: what is left is metric names, functions, keywords and numbers.
    rest = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr))))
    return {m.group(1) for m in _IDENT.finditer(rest)
            if not m.group(2) and m.group(1).lower() not in _KEYWORDS}


def label_names(expr: str) -> set[str]:
    """The labels an expression groups by or matches on, e.g. {'le', 'model_name', 'application'}.

    For a dashboard whose every aggregation is over one metric, each must be a label of that metric.
    """
    bare = _STRING.sub('""', expr)
    groups = [g for m in re.finditer(r"\b(?:by|without)\s*\(([^()]*)\)", bare) for g in m.group(1).split(",")]
    matched = [m.group(1) for block in _MATCHERS.findall(bare) for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", block)]
    return {x.strip() for x in groups + matched if x.strip()}


def dashboard_exprs(board: dict) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows' nested panels too) and annotations."""
    exprs = [a["expr"] for a in board.get("annotations", {}).get("list", []) if a.get("expr")]
    stack = list(board.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    return exprs


def queried_metrics(path: Path) -> set[str]:
    """Every metric name the dashboard JSON at `path` queries."""
    board = json.loads(path.read_text())
    return set().union(*(metric_names(e) for e in dashboard_exprs(board)))
