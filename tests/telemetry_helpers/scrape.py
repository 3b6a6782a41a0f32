"""One scrape of a node's Prometheus endpoint, as samples by name; counts of a histogram by model."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, list]:
    """metric sample name -> samples, from one scrape of the node's endpoint."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def count_by_model(samples: dict[str, list], name: str) -> dict[str, float]:
    """model_name -> the histogram `name`'s count summed over replicas."""
    got: dict[str, float] = {}
    for s in samples.get(name + "_count", []):
        got[s.labels.get("model_name", "")] = got.get(s.labels.get("model_name", ""), 0) + s.value
    return got
