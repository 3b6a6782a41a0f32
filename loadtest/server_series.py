"""Server-side series of a load test: what the app's Prometheus endpoints said while the load ran.

    Scraper (loadtest.scraper) ── every interval_s, every endpoint ──► Prometheus text
      └─► read_round(texts) ──► {model: Reading}   one round: all endpoints merged (replicas on other nodes)
    after the run: build_server_series(rounds, t0=results.started_unix_s) ──► ServerSeries in results.json

Pure: pydantic and prometheus_client's parser. The numbers come from fleetserve's engine signals
(`ray_fleetserve_engine_<signal>{model, replica}`, set by every replica each second whatever its
engine: vLLM or the simulator) and the autoscaler's target (`ray_fleetserve_autoscaler_target_replicas
{model}`), under the names serve_app.telemetry.metrics gives them. Replicas are the distinct
`replica` labels of a model's engine signals: Ray's agent drops a gauge two export periods after
its process stops reporting, so a dead replica leaves the count.

Freshness: Ray's agent exports what each process reported in its last period
(RAY_metrics_report_interval_ms, 10 s by default), so a 1 s scrape sees a value change at most
once per period. Start Ray with RAY_metrics_report_interval_ms=1000 for 1 s series.
"""

from __future__ import annotations

from typing import Iterable, Literal, Mapping

from pydantic import Field

from serve_app.engines.base import KV_USAGE, RUNNING_REQUESTS, WAITING_REQUESTS, WAITING_TOKENS
from serve_app.schema import Frozen
from serve_app.telemetry.metrics import AUTOSCALER_GAUGES, ENGINE_SIGNAL_METRICS, RAY_PREFIX

__all__ = ["ServerPoint", "ScaleEvent", "ModelServerSeries", "ServerSeries", "Reading", "Round", "parse_samples", "read_round", "readings",
           "build_server_series", "series_note", "WANTED_PREFIXES"]

_SIGNAL = {RAY_PREFIX + name: signal for signal, name in ENGINE_SIGNAL_METRICS.items()}
_TARGET = RAY_PREFIX + AUTOSCALER_GAUGES["target_replicas"]
WANTED_PREFIXES = (*_SIGNAL, _TARGET)
"""Metric names the series need: the scraper drops every other line before parsing (a scrape is mostly histograms)."""
_MAX_ERRORS = 5


class ServerPoint(Frozen):
    """One scrape round of one model: the sums over its replicas, on the client timeline's time base."""

    t_s: float = Field(..., description="Scrape time, seconds from the test start (RunResults.started_unix_s; "
                                        "negative before it): the time base of `timeline`.")
    waiting_requests: float = Field(..., ge=0, description="Requests waiting in the engines' schedulers (the queue), "
                                                           "summed over replicas.")
    running_requests: float = Field(..., ge=0, description="Requests the engines run, summed over replicas.")
    waiting_tokens: float = Field(..., ge=0, description="Prompt tokens of the waiting requests, summed over replicas.")
    kv_usage_max: float | None = Field(None, ge=0, description="KV-cache usage of the fullest replica, fraction 0-1.")
    kv_usage_mean: float | None = Field(None, ge=0, description="KV-cache usage averaged over replicas, fraction 0-1.")
    replicas: int = Field(..., ge=0, description="Replicas reporting engine signals.")
    target_replicas: float | None = Field(None, description="The autoscaler's target (None: not exported).")


class ScaleEvent(Frozen):
    """A change of a model's replica count or autoscaler target between two scrape rounds."""

    t_s: float = Field(..., description="Scrape time the new value was first seen, seconds from the test start.")
    what: Literal["replicas", "target_replicas"] = Field(..., description="Which series changed.")
    before: float | None = Field(..., description="Value in the previous round (None: not exported then).")
    after: float | None = Field(..., description="Value from this round on (None: no longer exported).")


class ModelServerSeries(Frozen):
    """One model's server-side series."""

    points: tuple[ServerPoint, ...] = Field((), description="One point per complete scrape round the model appeared in.")
    scale_events: tuple[ScaleEvent, ...] = Field((), description="Changes of replicas and target, in time order.")


class ServerSeries(Frozen):
    """What the app's metrics endpoints said during a run; absent from results.json when none was given."""

    endpoints: tuple[str, ...] = Field(..., description="Prometheus endpoints scraped (one per Ray node).")
    interval_s: float = Field(..., gt=0, description="Time between scrape rounds, s.")
    rounds: int = Field(..., ge=0, description="Scrape rounds attempted.")
    scrapes_failed: int = Field(..., ge=0, description="Single endpoint scrapes that failed (a round with one "
                                                      "is left out of the series: its sums would be partial).")
    errors: tuple[str, ...] = Field((), description=f"The first {_MAX_ERRORS} distinct scrape failures.")
    models: dict[str, ModelServerSeries] = Field(default_factory=dict, description="Series per model name.")


class Reading(Frozen):
    """One model in one scrape round (internal to scraping; not in results.json)."""

    waiting_requests: float = 0.0
    running_requests: float = 0.0
    waiting_tokens: float = 0.0
    kv: tuple[float, ...] = ()
    replicas: frozenset[str] = frozenset()
    target_replicas: float | None = None


class Round(Frozen):
    """One scrape round: when, what each model read, which endpoints failed and why."""

    t_unix_s: float
    readings: dict[str, Reading] = {}
    errors: dict[str, str] = {}


def parse_samples(text: str) -> list:
    """Return the samples of WANTED_PREFIXES in one Prometheus text (prometheus_client Sample tuples).

    Raises ValueError (prometheus_client's) on text that is not Prometheus exposition format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    if "# TYPE " not in text:  # e.g. an HTML page from the wrong port: not an empty scrape
        raise ValueError(f"no '# TYPE' line: not Prometheus text (starts {text[:60]!r})")
    return [s for fam in text_string_to_metric_families(_wanted_lines(text)) for s in fam.samples]


def read_round(texts: Iterable[str]) -> dict[str, Reading]:
    """Merge one round's Prometheus texts (one per endpoint) into a Reading per model. Raises ValueError."""
    return readings([s for text in texts for s in parse_samples(text)])


def readings(samples: Iterable) -> dict[str, Reading]:
    """Sum one round's samples (all endpoints) into a Reading per model (the `model` label)."""
    acc: dict[str, dict] = {}
    for s in samples:
        model = s.labels.get("model")
        if model is None:
            continue
        a = acc.setdefault(model, {"sums": {}, "kv": [], "replicas": set(), "target": None})
        if s.name == _TARGET:
            a["target"] = s.value
        elif s.name in _SIGNAL:
            signal = _SIGNAL[s.name]
            a["replicas"].add(s.labels.get("replica", ""))
            if signal == KV_USAGE:
                a["kv"].append(s.value)
            else:
                a["sums"][signal] = a["sums"].get(signal, 0.0) + s.value
    return {m: Reading(waiting_requests=a["sums"].get(WAITING_REQUESTS, 0.0),
                       running_requests=a["sums"].get(RUNNING_REQUESTS, 0.0),
                       waiting_tokens=a["sums"].get(WAITING_TOKENS, 0.0), kv=tuple(a["kv"]),
                       replicas=frozenset(a["replicas"]), target_replicas=a["target"]) for m, a in sorted(acc.items())}


def _wanted_lines(text: str) -> str:
    """Keep the samples (and their # TYPE lines) of WANTED_PREFIXES: parsing all of a scrape costs 10x more."""
    keep = []
    for line in text.splitlines():
        name = line[7:] if line.startswith(("# TYPE ", "# HELP ")) else line
        if name.startswith(WANTED_PREFIXES):
            keep.append(line)
    return "\n".join(keep) + "\n"


def build_server_series(rounds: Iterable[Round], *, t0_unix_s: float, endpoints: Iterable[str], interval_s: float,
                        scrapes_failed: int | None = None) -> ServerSeries:
    """Turn scrape rounds into per-model series and scale events, on the time base t0_unix_s."""
    rounds = sorted(rounds, key=lambda r: r.t_unix_s)
    errors: list[str] = []
    failed = 0
    for r in rounds:
        failed += len(r.errors)
        for endpoint, why in r.errors.items():
            msg = f"{endpoint}: {why}"
            if msg not in errors and len(errors) < _MAX_ERRORS:
                errors.append(msg)
    complete = [r for r in rounds if not r.errors]
    models: dict[str, ModelServerSeries] = {}
    for model in sorted({m for r in complete for m in r.readings}):
        points = tuple(_point(r.readings[model], r.t_unix_s - t0_unix_s) for r in complete if model in r.readings)
        models[model] = ModelServerSeries(points=points, scale_events=_scale_events(points))
    return ServerSeries(endpoints=tuple(endpoints), interval_s=interval_s, rounds=len(rounds),
                        scrapes_failed=failed if scrapes_failed is None else scrapes_failed, errors=tuple(errors),
                        models=models)


def _point(r: Reading, t_s: float) -> ServerPoint:
    return ServerPoint(t_s=round(t_s, 3), waiting_requests=r.waiting_requests, running_requests=r.running_requests,
                       waiting_tokens=r.waiting_tokens, kv_usage_max=max(r.kv) if r.kv else None,
                       kv_usage_mean=sum(r.kv) / len(r.kv) if r.kv else None, replicas=len(r.replicas),
                       target_replicas=r.target_replicas)


def _scale_events(points: tuple[ServerPoint, ...]) -> tuple[ScaleEvent, ...]:
    events = []
    for prev, cur in zip(points, points[1:]):
        for what in ("replicas", "target_replicas"):
            before, after = getattr(prev, what), getattr(cur, what)
            if before != after:
                events.append(ScaleEvent(t_s=cur.t_s, what=what, before=before, after=after))  # type: ignore[arg-type]
    return tuple(events)


def series_note(server: ServerSeries | None, models: Mapping[str, object] | Iterable[str]) -> list[str]:
    """Notes a results.json carries about its server series: failed scrapes, models never seen."""
    if server is None:
        return []
    notes = []
    if server.scrapes_failed:
        notes.append(f"{server.scrapes_failed} of {server.rounds * len(server.endpoints)} metric scrapes failed "
                     f"(rounds with a failure are left out of the server series): "
                     + "; ".join(server.errors))
    missing = [m for m in models if m not in server.models]
    if missing:
        notes.append(f"no server series for {', '.join(missing)}: the scraped endpoints "
                     f"({', '.join(server.endpoints)}) had no fleetserve engine signals for it")
    return notes
