"""Before and after a load test: is the target there (preflight), and did the run pass (`--fail-on`)?

    preflight: GET {host}/v1/models with the run's key ──► answers? key accepted? every model listed?
    run ──► RunResults ──► verdict(results, thresholds) ──► reasons it failed (empty: passed)

Like Locust (`--exit-code-on-error 1`), any failed request fails the run unless thresholds
say how much is tolerated. Pure but for the one HTTP request of the preflight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadtest.errors import LoadTestError
from loadtest.results import RunResults

__all__ = ["preflight", "Threshold", "parse_fail_on", "verdict", "top_failures"]

_METRICS = {
    "error_rate": "failed / finished requests (0..1)",
    "ttft_p95_ms": "time to first token, p95", "ttft_p50_ms": "time to first token, p50",
    "tpot_p95_ms": "time per output token, p95", "e2e_p95_ms": "end-to-end latency, p95",
}


def preflight(host: str, models: list[str], *, api_key: str | None, timeout_s: float = 10.0) -> None:
    """Raise LoadTestError unless `host` answers /v1/models, accepts the key and lists every model."""
    import httpx

    url = host.rstrip("/") + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise LoadTestError(f"preflight: nothing answers at {host} ({type(e).__name__}: {e}); start the server "
                            f"(`fleetserve serve`) or pass --host") from None
    if r.status_code in (401, 403):
        raise LoadTestError(f"preflight: {url} refused the API key (HTTP {r.status_code}); "
                            + ("set FLEETSERVE_API_KEY to a key the server accepts" if not api_key
                               else "FLEETSERVE_API_KEY is not one of the server's keys"))
    if r.status_code != 200:
        raise LoadTestError(f"preflight: {url} answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        served = [m["id"] for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise LoadTestError(f"preflight: {url} is not an OpenAI /v1/models answer: {r.text[:200]}") from None
    missing = [m for m in models if m not in served]
    if missing:
        raise LoadTestError(f"preflight: {host} does not serve {', '.join(map(repr, missing))}; it serves "
                            f"{served}; pass -m with one of those")


@dataclass(frozen=True)
class Threshold:
    """A run fails when `metric` exceeds `limit`."""

    metric: str
    limit: float

    def __str__(self) -> str:
        return f"{self.metric}>{self.limit:g}"


def parse_fail_on(text: str) -> tuple[Threshold, ...]:
    """Parse `error_rate>0.05,ttft_p95_ms>500` (empty: any failed request fails the run).

    Raises LoadTestError naming the bad item and the metrics there are.
    """
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        m = re.fullmatch(r"(\w+)\s*>\s*([0-9.]+)", item)
        if not m or m.group(1) not in _METRICS:
            raise LoadTestError(f"--fail-on {item!r}: use METRIC>LIMIT with METRIC one of "
                                + ", ".join(f"{k} ({v})" for k, v in _METRICS.items()))
        out.append(Threshold(m.group(1), float(m.group(2))))
    return tuple(out)


def _value(results: RunResults, metric: str) -> float | None:
    if metric == "error_rate":
        total = results.requests.total
        return results.requests.failed / total if total else None
    name, pct, _ = metric.split("_")
    stats = results.metrics.get(name.upper())
    return getattr(stats, pct, None) if stats else None


def verdict(results: RunResults, thresholds: tuple[Threshold, ...] = ()) -> list[str]:
    """Return why the run failed: no request finished, a failed request (no thresholds), or each threshold broken."""
    r = results.requests
    if r.total == 0:
        return ["no request finished"]
    if r.failed == r.total:
        return [f"all {r.total} requests failed"]
    if not thresholds:
        return [f"{r.failed} of {r.total} requests failed (--fail-on error_rate>X tolerates some)"] if r.failed else []
    out = []
    for t in thresholds:
        v = _value(results, t.metric)
        if v is None:
            out.append(f"{t.metric}: not measured (no successful request), so {t} cannot pass")
        elif v > t.limit:
            out.append(f"{t.metric} = {v:.4g} > {t.limit:g}")
    return out


def top_failures(results: RunResults, n: int = 3) -> list[str]:
    """The `n` most frequent failure messages, as `count x message` lines."""
    groups = sorted(results.failures, key=lambda g: -g.occurrences)[:n]
    return [f"{g.occurrences} x {g.error[:300]}" for g in groups]
