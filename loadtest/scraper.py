"""Scrape the app's Prometheus endpoints on an interval while a load test runs: one small thread.

    Scraper(endpoints, interval_s=1) ── start() ──► thread: every interval_s, GET each endpoint
        ──► server_series.parse_samples + readings ──► Round (kept: a few numbers per model, not the text)
    stop() (or max_s passed, or max_rounds kept) ──► series(t0_unix_s) ──► ServerSeries

A failed scrape (connection refused, timeout, non-200, unparsable text) is counted and its
message kept; it never stops the thread or fails the run. `fetch` is the test seam: a plain
function from URL to text (default: httpx.get).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from loadtest.errors import LoadTestError
from loadtest.server_series import Round, ServerSeries, build_server_series, parse_samples, readings

__all__ = ["Scraper", "http_fetch", "check_endpoint"]

MAX_ROUNDS = 20_000  # 5.5 h at 1 s: a bound on memory, far past any ladder step


def http_fetch(url: str, *, timeout_s: float = 5.0) -> str:
    """GET `url` and return its text; raise on a transport error or a non-200 status."""
    import httpx

    r = httpx.get(url, timeout=timeout_s)
    r.raise_for_status()
    return r.text


def check_endpoint(url: str) -> None:
    """Raise LoadTestError unless `url` looks like an http(s) metrics URL (checked before the run, not during it)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise LoadTestError(f"--metrics {url!r}: give the app's Prometheus endpoint as a URL, e.g. "
                            f"http://127.0.0.1:<local_ray.metrics_export_port>/metrics")


class Scraper:
    """Scrape `endpoints` every `interval_s` in a daemon thread until stop(), `max_s` or MAX_ROUNDS."""

    def __init__(self, endpoints: Sequence[str], *, interval_s: float = 1.0, max_s: float,
                 fetch: Callable[[str], str] = http_fetch, clock: Callable[[], float] = time.time):
        if interval_s <= 0:
            raise LoadTestError(f"metrics interval_s={interval_s} must be > 0 (seconds between scrape rounds)")
        for url in endpoints:
            check_endpoint(url)
        self.endpoints = tuple(endpoints)
        self.interval_s = interval_s
        self._max_s = max_s
        self._fetch = fetch
        self._clock = clock
        self._rounds: list[Round] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)

    def __enter__(self) -> "Scraper":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start scraping (one round right away)."""
        if self.endpoints:
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the round in flight (waits at most timeout_s for it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def scrape_once(self) -> Round:
        """Scrape every endpoint once and return the round (errors by endpoint, never raised)."""
        t = self._clock()
        samples, errors = [], {}
        for url in self.endpoints:
            try:
                samples += parse_samples(self._fetch(url))  # parsed per endpoint: bad text is blamed on its URL
            except Exception as e:  # noqa: BLE001 - a failed scrape is data, not a failure of the run
                errors[url] = _why(e)
        # A partial round would undercount replicas and queues: keep only its errors.
        return Round(t_unix_s=t, readings=readings(samples) if not errors else {}, errors=errors)

    def series(self, *, t0_unix_s: float) -> ServerSeries:
        """The rounds so far as a ServerSeries on the time base `t0_unix_s` (the test start)."""
        return build_server_series(list(self._rounds), t0_unix_s=t0_unix_s, endpoints=self.endpoints,
                                   interval_s=self.interval_s)

    def _loop(self) -> None:
        deadline = time.monotonic() + self._max_s
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline and len(self._rounds) < MAX_ROUNDS:
            self._rounds.append(self.scrape_once())
            next_at += self.interval_s
            # A period, not a wait for a condition: stop() wakes it at once.
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def _why(e: Exception) -> str:
    import httpx

    if isinstance(e, httpx.HTTPStatusError):
        return f"HTTP {e.response.status_code}"
    return f"{type(e).__name__}: {e}"[:200]
