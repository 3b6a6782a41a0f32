"""API keys from their sources, checked in constant time, and per-key limits.

    config.api_keys ─┐
    $api_keys_env ───┼─► KeySet.match(token) ─► key id (a digest prefix, never the key) ─► KeyLimiter
    api_keys_file ───┘   (file re-read when it changes: keys rotate without a redeploy)

Pure of Ray and vLLM: the gate of the router and of direct-ingress model replicas share it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.schema import KeyLimits

__all__ = ["KeySet", "KeyLimiter", "Verdict", "split_keys"]

_FILE_RECHECK_S = 5.0  # how often the key file's mtime is looked at; rotation takes effect within this


def split_keys(text: str) -> list[str]:
    """Keys in `text`, separated by commas or newlines; blanks and `#` comment lines dropped."""
    out = []
    for line in text.replace(",", "\n").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _digest(key: str) -> bytes:
    # Compare digests, not keys: equal length for every candidate, so the time taken tells
    # nothing about a key's length or prefix.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass
class KeySet:
    """The accepted keys of one replica: inline ones, an env var's and a file's (re-read on change)."""

    inline: tuple[str, ...] = ()
    env_var: str | None = None
    file: str | None = None
    _digests: tuple[bytes, ...] = field(default=(), init=False, repr=False)
    _file_state: tuple[float, int] | None = field(default=None, init=False, repr=False)
    _next_check: float = field(default=0.0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._reload(force=True)

    @property
    def enabled(self) -> bool:
        """True when any source is configured: then a key is required even if the sources are empty."""
        return bool(self.inline or self.env_var or self.file)

    def _reload(self, *, force: bool = False) -> None:
        keys = list(self.inline)
        if self.env_var:
            keys += split_keys(os.environ.get(self.env_var, ""))
        state = None
        if self.file:
            p = Path(self.file)
            try:
                st = p.stat()
                state = (st.st_mtime, st.st_size)
                if not force and state == self._file_state:
                    return
                keys += split_keys(p.read_text())
            except OSError:
                state = None  # a missing file holds no keys; the other sources still apply (default-deny)
        self._file_state = state
        self._digests = tuple(_digest(k) for k in keys)

    def match(self, token: str | None) -> str | None:
        """Return the id of the key `token` equals (a digest prefix, safe to log), or None."""
        if self.file and time.monotonic() >= self._next_check:
            with self._lock:
                self._next_check = time.monotonic() + _FILE_RECHECK_S
                self._reload()
        if not token:
            return None
        got = _digest(token)
        found = None
        for d in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(got, d):
                found = d
        return found.hex()[:12] if found is not None else None


@dataclass(frozen=True)
class Verdict:
    """A limiter's answer: admitted, or refused with the reason and the seconds to wait."""

    ok: bool
    reason: str = ""
    retry_after_s: float = 0.0


class KeyLimiter:
    """Concurrency and token-bucket rate limits per key id, for one ingress replica.

    Single-threaded use from the replica's event loop; `now` is passed in so tests need no clock.
    """

    def __init__(self, limits: KeyLimits):
        self._limits = limits
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)
        rate = limits.requests_per_s
        self._burst = float(limits.burst or max(1, math.ceil(2 * rate))) if rate else 0.0

    def acquire(self, key_id: str, now: float) -> Verdict:
        """Admit one request of `key_id` at `now` (seconds) or say why not; call `release` when it ends."""
        lim = self._limits
        if lim.max_concurrent_requests is not None and self._in_flight.get(key_id, 0) >= lim.max_concurrent_requests:
            return Verdict(False, f"this API key already has {lim.max_concurrent_requests} requests in flight "
                                  "(key_limits.max_concurrent_requests)", 1.0)
        if lim.requests_per_s:
            tokens, at = self._buckets.get(key_id, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * lim.requests_per_s)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait = (1.0 - tokens) / lim.requests_per_s
                return Verdict(False, f"this API key is over {lim.requests_per_s:g} requests/s "
                                      "(key_limits.requests_per_s)", wait)
            self._buckets[key_id] = (tokens - 1.0, now)
        self._in_flight[key_id] = self._in_flight.get(key_id, 0) + 1
        return Verdict(True)

    def release(self, key_id: str) -> None:
        """End one request of `key_id` admitted by `acquire`."""
        n = self._in_flight.get(key_id, 0) - 1
        if n > 0:
            self._in_flight[key_id] = n
        else:
            self._in_flight.pop(key_id, None)
