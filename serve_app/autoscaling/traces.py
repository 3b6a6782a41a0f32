"""Request traces for the replay: arrival time, prompt and output tokens (and a model) per request.

Pure. Readers for the logs SREs have, each a column mapping onto the same three fields:

    format      file    time column (unit)               prompt tokens     output tokens
    fleetserve  csv     timestamp_s (s)                  prompt_tokens     output_tokens
    azure       csv     TIMESTAMP (date-time)            ContextTokens     GeneratedTokens
    burstgpt    csv     Timestamp (s)                    Request tokens    Response tokens
    mooncake    jsonl   timestamp (ms)                   input_length      output_length
    locust      jsonl   start_unix_s (s)                 input_tokens      max_tokens  (loadtest's requests.jsonl)
    jsonl       jsonl   timestamp_s (s)                  prompt_tokens     output_tokens (the app's request log)

The format is recognised from the header (CSV) or the first record's keys (JSONL); `columns`
overrides any of them (`time=`, `prompt=`, `output=`, `model=`, `time_unit=s|ms|datetime`). A
bad row raises ConfigError naming the file, the line and the field. Times are shifted so the
first request arrives at 0.

Generators (seeded, so a replay is reproducible): `generate("poisson", rate_rps=100, duration_s=3600)`,
"diurnal" (rate between rate_rps*low and rate_rps over period_s), "ramp" (rate_rps to end_rps),
"bursty" (rate_rps, plus burst_rps for burst_s every burst_every_s). Arrivals are a
non-homogeneous Poisson process drawn by thinning.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from serve_app.errors import ConfigError

__all__ = ["RequestTrace", "FORMATS", "read_trace", "generate", "load_requests", "GENERATORS"]


@dataclass(frozen=True)
class RequestTrace:
    """Requests sorted by arrival; parallel tuples keep 360k requests small and fast to walk."""

    arrival_s: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    models: tuple[str, ...] | None = None  # None: one model
    source: str = "trace"

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """From the first arrival to the last."""
        return self.arrival_s[-1] - self.arrival_s[0] if self.arrival_s else 0.0

    def for_model(self, model: str | None) -> "RequestTrace":
        """Keep one model's requests (all when the trace names no model or `model` is None)."""
        if self.models is None or model is None:
            return self
        keep = [i for i, m in enumerate(self.models) if m == model]
        if not keep:
            raise ConfigError([("model", f"no request for model {model!r}; the trace has {sorted(set(self.models))}")],
                              source=self.source)
        return _build([(self.arrival_s[i], self.prompt_tokens[i], self.output_tokens[i], model) for i in keep],
                      self.source, shift=False)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[float, int, int]], *, source: str = "trace") -> "RequestTrace":
        """Build from (arrival_s, prompt_tokens, output_tokens) rows in any order."""
        return _build([(t, p, o, None) for t, p, o in rows], source, shift=False)


# name -> (kind, time, time unit, prompt, output, model)
FORMATS: dict[str, tuple[str, str, str, str, str, str | None]] = {
    "fleetserve": ("csv", "timestamp_s", "s", "prompt_tokens", "output_tokens", "model"),
    "azure": ("csv", "TIMESTAMP", "datetime", "ContextTokens", "GeneratedTokens", None),
    "burstgpt": ("csv", "Timestamp", "s", "Request tokens", "Response tokens", "Model"),
    "mooncake": ("jsonl", "timestamp", "ms", "input_length", "output_length", None),
    "locust": ("jsonl", "start_unix_s", "s", "input_tokens", "max_tokens", "model"),
    "jsonl": ("jsonl", "timestamp_s", "s", "prompt_tokens", "output_tokens", "model"),
}


def read_trace(path: str | Path, *, columns: Mapping[str, str] | None = None, fmt: str | None = None) -> RequestTrace:
    """Read a CSV or JSONL request log; raises ConfigError naming file, line and field on a bad row."""
    p = Path(path).expanduser()
    src = str(p)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([("", f"cannot read trace file: {e}")], source=src) from e
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ConfigError([("", "the trace file is empty; expected a CSV header or JSONL records")], source=src)
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError([("format", f"unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")], source=src)
    first = next(line for line in lines if line.strip()).lstrip()
    if first.startswith("{"):
        return _read_jsonl(lines, src, columns or {}, fmt)
    return _read_csv(lines, src, columns or {}, fmt)


def _mapping(keys: Iterable[str], kind: str, columns: Mapping[str, str], fmt: str | None, src: str) -> dict[str, Any]:
    keys = set(keys)
    known = [fmt] if fmt else [n for n, f in FORMATS.items() if f[0] == kind]
    chosen = None
    for name in known:
        _, t, _, pr, out, _ = FORMATS[name]
        if fmt or {t, pr, out} <= keys:
            chosen = name
            break
    spec = FORMATS[chosen] if chosen else (kind, "", "s", "", "", None)
    m = {"time": spec[1], "time_unit": spec[2], "prompt": spec[3], "output": spec[4], "model": spec[5]}
    bad = set(columns) - set(m)
    if bad:
        raise ConfigError([("columns", f"unknown key(s) {sorted(bad)}; use time, prompt, output, model, time_unit")], source=src)
    m.update(columns)
    missing = [f"{k}={m[k]!r}" if m[k] else k for k in ("time", "prompt", "output") if not m[k] or m[k] not in keys]
    if missing:
        raise ConfigError([("header", f"no column for {', '.join(missing)} in {sorted(keys)}; known formats: "
                            f"{', '.join(FORMATS)}; map yours with columns time=..,prompt=..,output=..")], source=src)
    if m["time_unit"] not in ("s", "ms", "datetime"):
        raise ConfigError([("columns.time_unit", f"{m['time_unit']!r} is not s, ms or datetime")], source=src)
    if m["model"] and m["model"] not in keys:
        m["model"] = None
    return m


def _read_csv(lines: list[str], src: str, columns: Mapping[str, str], fmt: str | None) -> RequestTrace:
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader)]
    m = _mapping(header, "csv", columns, fmt, src)
    idx = {k: header.index(m[k]) for k in ("time", "prompt", "output")}
    midx = header.index(m["model"]) if m["model"] else None
    to_s = _time_parser(m["time_unit"])
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        rec = {m[k]: row[i] if i < len(row) else "" for k, i in idx.items()}
        model = row[midx].strip() if midx is not None and midx < len(row) else None
        rows.append(_row(rec, m, to_s, model, src, lineno))
    return _build(rows, src)


def _read_jsonl(lines: list[str], src: str, columns: Mapping[str, str], fmt: str | None) -> RequestTrace:
    m: dict[str, Any] | None = None
    to_s: Callable[[Any], float] = float
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError([(f"line {lineno}", f"not valid JSON: {e.msg}")], source=src) from e
        if not isinstance(rec, dict):
            raise ConfigError([(f"line {lineno}", "expected a JSON object per line")], source=src)
        if m is None:
            m = _mapping(rec.keys(), "jsonl", columns, fmt, src)
            to_s = _time_parser(m["time_unit"])
        model = rec.get(m["model"]) if m["model"] else None
        rows.append(_row(rec, m, to_s, None if model is None else str(model), src, lineno))
    return _build(rows, src)


def _row(rec: Mapping[str, Any], m: Mapping[str, Any], to_s: Callable[[Any], float], model: str | None,
         src: str, lineno: int) -> tuple[float, int, int, str | None]:
    field = m["time"]
    try:
        t = to_s(rec.get(field))
        if not math.isfinite(t):
            raise ValueError("not finite")
        out = []
        for key in ("prompt", "output"):
            field = m[key]
            v = rec.get(field)
            n = int(float(v)) if isinstance(v, str) else int(v)  # type: ignore[arg-type]
            if n < (0 if key == "prompt" else 1):
                raise ValueError(f"must be >= {0 if key == 'prompt' else 1}")
            out.append(n)
    except (TypeError, ValueError) as e:
        raise ConfigError([(f"line {lineno}.{field}", f"bad value {rec.get(field)!r}: {e}")], source=src) from None
    return t, out[0], out[1], model


def _time_parser(unit: str) -> Callable[[Any], float]:
    if unit == "ms":
        return lambda v: float(v) / 1000.0
    if unit == "datetime":
        return _datetime_s
    return float


def _datetime_s(v: Any) -> float:
    s = str(v).strip().replace("T", " ").rstrip("Z")
    if "." in s:  # Azure's traces carry 7 fractional digits; datetime takes 6
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(s).timestamp()


def _build(rows: list[tuple[float, int, int, str | None]], src: str, *, shift: bool = True) -> RequestTrace:
    if not rows:
        raise ConfigError([("", "the trace has no requests")], source=src)
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0] if shift else 0.0
    models = tuple(r[3] or "" for r in rows) if any(r[3] for r in rows) else None
    return RequestTrace(tuple(r[0] - t0 for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows), models, src)


# ---- generators -------------------------------------------------------------------------------

def _rate_fn(kind: str, p: Mapping[str, float]) -> tuple[Callable[[float], float], float]:
    r = float(p.get("rate_rps", 10.0))
    if kind == "poisson":
        return (lambda t: r), r
    if kind == "diurnal":
        low, period = float(p.get("low", 0.2)), float(p.get("period_s", 3600.0))
        return (lambda t: r * (low + (1 - low) * 0.5 * (1 - math.cos(2 * math.pi * t / period)))), r
    if kind == "ramp":
        end, d = float(p.get("end_rps", 2 * r)), max(1e-9, float(p.get("duration_s", 600.0)))
        return (lambda t: r + (end - r) * min(1.0, t / d)), max(r, end)
    if kind == "bursty":
        b, bs, every = float(p.get("burst_rps", 5 * r)), float(p.get("burst_s", 30.0)), float(p.get("burst_every_s", 300.0))
        start = float(p.get("first_burst_s", every / 2))
        return (lambda t: r + (b if t >= start and (t - start) % every < bs else 0.0)), r + b
    raise ConfigError([("generator", f"unknown generator {kind!r}; use one of {', '.join(GENERATORS)}")], source="generator")


GENERATORS = ("poisson", "diurnal", "ramp", "bursty")


def generate(kind: str, *, duration_s: float, seed: int = 0, prompt_tokens: int = 512, output_tokens: int = 128,
             length_jitter: float = 0.5, length_sigma: float = 0.0, burst_prompt_tokens: int | None = None,
             burst_output_tokens: int | None = None, **params: float) -> RequestTrace:
    """Draw a seeded trace; token counts are uniform in mean * (1 ± length_jitter), or lognormal with
    that mean and `length_sigma` when it is > 0 (heavy-tailed, as chat prompts are).

    bursty only: `burst_prompt_tokens` / `burst_output_tokens` give the burst's own requests (the
    +burst_rps part) other mean lengths, e.g. a batch of long-document summaries landing on chat
    traffic: the request rate then says little about the work. Unset, the trace is drawn exactly
    as before (the same seed gives the same requests).
    """
    if duration_s <= 0:
        raise ConfigError([("duration_s", f"{duration_s} must be > 0")], source=f"generator {kind}")
    rate, peak = _rate_fn(kind, {**params, "duration_s": params.get("duration_s", duration_s)})
    if peak <= 0:
        raise ConfigError([("rate_rps", f"peak rate {peak} must be > 0")], source=f"generator {kind}")
    mixed = burst_prompt_tokens is not None or burst_output_tokens is not None
    if mixed and kind != "bursty":
        raise ConfigError([("burst_prompt_tokens", f"burst lengths apply to the bursty generator only, not {kind!r}; "
                            "use gen:bursty or drop burst_prompt_tokens/burst_output_tokens")], source=f"generator {kind}")
    base_rate = float(params.get("rate_rps", 10.0))
    rng = random.Random(seed)
    expo, uni = rng.expovariate, rng.random
    times: list[float] = []
    in_burst: list[bool] = []
    t = 0.0
    while True:
        t += expo(peak)
        if t >= duration_s:
            break
        r = rate(t)
        u = uni() * peak
        if u <= r:  # thinning: accept with probability rate(t) / peak
            times.append(t)
            if mixed:  # u is uniform on [0, r): below the base rate it is base traffic, above it the burst's
                in_burst.append(u > base_rate)
    n = len(times)
    j = max(0.0, min(1.0, length_jitter))

    def draw(mean: int, lo: int) -> int:
        if length_sigma > 0:
            mu = math.log(mean) - length_sigma ** 2 / 2  # E[lognormal] = mean
            return max(lo, int(rng.lognormvariate(mu, length_sigma)))
        return max(lo, int(mean * (1 - j + 2 * j * uni())))

    def lengths(mean: int, burst_mean: int | None, lo: int) -> tuple[int, ...]:
        if not mixed:
            return tuple(draw(mean, lo) for _ in range(n))
        return tuple(draw(burst_mean if b and burst_mean is not None else mean, lo) for b in in_burst)

    prompts = lengths(prompt_tokens, burst_prompt_tokens, 1)
    outputs = lengths(output_tokens, burst_output_tokens, 1)
    return RequestTrace(tuple(times), prompts, outputs, None, f"gen:{kind}(seed={seed})")


def load_requests(spec: str, *, columns: Mapping[str, str] | None = None, fmt: str | None = None) -> RequestTrace:
    """Read a trace file, or generate one from `gen:KIND,key=value,...` (e.g. gen:poisson,rate_rps=100,duration_s=3600)."""
    if not spec.startswith("gen:"):
        return read_trace(spec, columns=columns, fmt=fmt)
    kind, *kvs = spec[4:].split(",")
    params: dict[str, float] = {}
    for kv in kvs:
        key, sep, value = kv.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise ConfigError([(key.strip() or kv, f"value {value!r} is not a number (write key=value)")], source=spec) from None
        if not sep:
            raise ConfigError([(kv, "write key=value")], source=spec)
    if "duration_s" not in params:
        raise ConfigError([("duration_s", "required, e.g. gen:poisson,rate_rps=10,duration_s=600")], source=spec)
    ints = {k: int(params.pop(k)) for k in ("seed", "prompt_tokens", "output_tokens", "burst_prompt_tokens",
                                             "burst_output_tokens") if k in params}
    return generate(kind, duration_s=params.pop("duration_s"), **ints, **params)
