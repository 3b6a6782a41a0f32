"""The results schema of a strategy sweep (`sweep.json`), goodput, and the per-step summary of a run.

Pure: pydantic and json only. A sweep is one model, several layouts (strategies), and for each
a ladder of closed-loop concurrencies or open-loop rates; every ladder step is one
`loadtest.run` whose out dir (results.json, requests.jsonl, Locust's files) stays beside
sweep.json. `schema_version` changes whenever a field changes meaning or goes away (adding a
field does not). The JSON Schema is `SweepResults.model_json_schema()`, kept in
sweep.schema.json (here and beside every sweep.json).

Goodput counts the requests that met the SLO per request: ok, TTFT <= ttft_ms and TPOT <=
tpot_ms (a one-token request has no TPOT and passes that half). It is computed from the
request log, so `with_slo` can re-score a finished sweep at another SLO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field, ValidationError

from loadtest.errors import LoadTestError
from loadtest.results import MetricStats, RequestRecord, RunResults, read_requests
from serve_app.schema import Frozen

__all__ = [
    "SWEEP_SCHEMA_VERSION", "SweepResults", "StrategyResult", "StepResult", "StrategyLayout", "PlacementGroupSeen",
    "ClusterInfo", "NodeInfo", "Ladder", "Slo", "Goodput", "Percentiles", "goodput", "step_result", "with_slo",
    "load_sweep", "write_sweep", "schema_text", "SWEEP_FILE", "SCHEMA_FILE",
]

SWEEP_SCHEMA_VERSION = 1
SWEEP_FILE = "sweep.json"
SCHEMA_FILE = "sweep.schema.json"


class Slo(Frozen):
    """Per-request latency target of goodput; a None bound is not checked."""

    ttft_ms: float | None = Field(500.0, gt=0, description="Time to first token must be <= this, ms.")
    tpot_ms: float | None = Field(50.0, gt=0, description="Time per output token after the first must be <= this, ms.")

    def describe(self) -> str:
        """Human form, e.g. 'TTFT <= 500 ms and TPOT <= 50 ms'."""
        parts = [f"{k} <= {v:g} ms" for k, v in (("TTFT", self.ttft_ms), ("TPOT", self.tpot_ms)) if v is not None]
        return " and ".join(parts) or "no latency bound (every ok request counts)"


class Goodput(Frozen):
    """Requests of one ladder step that met the SLO, and their rate."""

    requests_ok: int = Field(..., ge=0, description="Requests that succeeded.")
    requests_meeting_slo: int = Field(..., ge=0, description="Ok requests with TTFT and TPOT within the SLO.")
    fraction: float = Field(..., ge=0, le=1, description="requests_meeting_slo / all requests of the step (0 without requests).")
    requests_per_s: float = Field(..., ge=0, description="requests_meeting_slo / the step's duration_s: goodput.")
    output_tokens_per_s: float = Field(..., ge=0, description="Output tokens of the requests meeting the SLO / duration_s.")


class Percentiles(Frozen):
    """A latency metric of one step (Locust's histogram: 3 significant digits), ms."""

    count: int = Field(0, ge=0, description="Samples (ITL: gaps between chunks; others: requests).")
    mean: float | None = Field(None, description="Mean, ms.")
    p50: float | None = Field(None, description="Median, ms.")
    p95: float | None = Field(None, description="95th percentile, ms.")
    p99: float | None = Field(None, description="99th percentile, ms.")

    @classmethod
    def of(cls, m: MetricStats | None) -> "Percentiles":
        """Take count, mean, p50, p95 and p99 of a run's metric (empty when the run has none)."""
        return cls() if m is None else cls(count=m.count, mean=m.mean, p50=m.p50, p95=m.p95, p99=m.p99)


class StepResult(Frozen):
    """One rung of the ladder: a RunResults summarised, plus goodput."""

    load: float = Field(..., gt=0, description="Concurrent users (ladder kind concurrency) or requests/s (kind rate).")
    run_dir: str = Field(..., description="The step's loadtest out dir, relative to the sweep dir.")
    duration_s: float = Field(..., ge=0, description="Test start to the last request's end, s.")
    requests_total: int = Field(..., ge=0, description="Requests finished.")
    requests_failed: int = Field(..., ge=0, description="Of which failed.")
    requests_per_s: float = Field(..., ge=0, description="Ok requests / duration_s.")
    output_tokens: int = Field(..., ge=0, description="Output tokens of ok requests.")
    output_tokens_per_s: float = Field(..., ge=0, description="output_tokens / duration_s: throughput.")
    ttft_ms: Percentiles = Field(..., description="Time to first token.")
    itl_ms: Percentiles = Field(..., description="Gap between consecutive content chunks (one token each on vLLM).")
    tpot_ms: Percentiles = Field(..., description="Per request: (E2E - TTFT) / (output tokens - 1).")
    e2e_ms: Percentiles = Field(..., description="Request sent to end of stream.")
    goodput: Goodput = Field(..., description="Requests meeting the sweep's SLO.")
    notes: tuple[str, ...] = Field((), description="The run's validity warnings (RunResults.notes).")


class PlacementGroupSeen(Frozen):
    """A placement group of one of the strategy's replicas, read from Ray's table once the app ran."""

    bundles: tuple[dict[str, float], ...] = Field(..., description="Resources of each bundle.")
    strategy: str = Field(..., description="STRICT_PACK, PACK, SPREAD or STRICT_SPREAD.")
    nodes: int = Field(..., ge=0, description="Distinct nodes its bundles landed on.")


class StrategyLayout(Frozen):
    """How each replica of the strategy was laid out: the resolved cluster.planner Layout, as recorded."""

    tensor: int = Field(..., ge=1, description="Tensor-parallel size.")
    pipeline: int = Field(..., ge=1, description="Pipeline-parallel size.")
    expert: int = Field(..., ge=1, description="Expert-parallel size (1 = off).")
    replicas: int = Field(..., ge=1, description="Fixed replica count.")
    bundles: tuple[dict[str, float], ...] = Field(..., description="Planned placement-group bundles of one replica.")
    placement_strategy: str = Field(..., description="Planned placement-group strategy.")
    executor: str = Field(..., description="vLLM distributed executor: mp or ray.")
    engine_args: dict = Field(default_factory=dict, description="engine_args the engine got (config + strategy overrides).")

    @classmethod
    def from_layout(cls, layout: Any, *, replicas: int, engine_args: dict) -> "StrategyLayout":
        """Record a resolved `cluster.planner.Layout` with the strategy's replica count and engine_args."""
        par = layout.parallelism
        return cls(tensor=par.tensor, pipeline=par.pipeline, expert=par.expert, replicas=replicas,
                   bundles=layout.bundles, placement_strategy=layout.strategy, executor=layout.executor,
                   engine_args=engine_args)

    def short(self) -> str:
        """e.g. 'tp2 pp1 ep1 x1, 2 bundles STRICT_PACK'."""
        return (f"tp{self.tensor} pp{self.pipeline} ep{self.expert} x{self.replicas}, "
                f"{len(self.bundles)} bundle{'s' * (len(self.bundles) != 1)} {self.placement_strategy}")


class StrategyResult(Frozen):
    """One strategy: its layout, deploy and teardown times, and its ladder."""

    name: str = Field(..., description="The strategy as given, e.g. tp2-pp2 or pp2:enforce_eager=false.")
    slug: str = Field(..., description="Directory (and Serve app suffix) of the strategy.")
    layout: StrategyLayout | None = Field(None, description="The planned layout; None when the strategy failed before planning.")
    placement_groups: tuple[PlacementGroupSeen, ...] = Field((), description="Groups seen for the app's replicas.")
    ready_s: float | None = Field(None, description="Deploy call to the app RUNNING and warmed up, s.")
    teardown_s: float | None = Field(None, description="Delete call to the app's placement groups gone, s.")
    steps: tuple[StepResult, ...] = Field((), description="Ladder steps, in the order run.")
    error: str | None = Field(None, description="Why the strategy stopped early (deploy failed, refused, step failed).")


class NodeInfo(Frozen):
    """One alive Ray node."""

    node_id: str = Field(..., description="Ray node id (first 12 hex digits).")
    resources: dict[str, float] = Field(..., description="CPU, GPU, memory_gib and custom resources (node: markers left out).")


class ClusterInfo(Frozen):
    """Where the sweep ran, and where the load came from."""

    address: str = Field(..., description="Ray address connected to (local, a host:port, or ray://...).")
    ray_version: str = Field(..., description="Ray version of the driver.")
    nodes: tuple[NodeInfo, ...] = Field(..., description="Alive nodes at the start of the sweep.")
    load_generator: str = Field(..., description="Machine the locust processes ran on (CPU count, platform).")


class Ladder(Frozen):
    """The load each strategy gets: closed-loop concurrencies or open-loop rates, one run each."""

    kind: Literal["concurrency", "rate"] = Field(..., description="concurrency: N users back to back; rate: Poisson req/s.")
    values: tuple[float, ...] = Field(..., min_length=1, description="Concurrencies or rates, in the order run.")
    step_duration_s: float = Field(..., gt=0, description="Sending time of each step, s.")
    drain_s: float = Field(..., ge=0, description="Wait for requests in flight after each step, s.")
    input_tokens: int = Field(..., ge=1, description="Prompt length of every request (approximate tokens).")
    output_tokens: int = Field(..., ge=1, description="max_tokens of every request, sent with ignore_eos.")
    users: int | None = Field(None, description="kind rate: users carrying the arrivals.")
    workers: int = Field(0, ge=0, description="Locust worker processes per step (0 = one local process).")
    warmup_requests: int = Field(..., ge=0, description="Requests sent before the ladder (not measured).")


class SweepResults(Frozen):
    """A strategy sweep: one model, its layouts, each under the same load ladder."""

    schema_version: Literal[1] = Field(SWEEP_SCHEMA_VERSION, description="Bumped when a field changes meaning or is removed.")
    kind: Literal["fleetserve.loadtest.sweep"] = "fleetserve.loadtest.sweep"
    model: str = Field(..., description="Served model name.")
    source: str = Field(..., description="The model's weights (config source).")
    host: str = Field(..., description="Base URL the load was sent to (Serve's HTTP proxy).")
    started_unix_s: float = Field(..., description="Sweep start, epoch seconds.")
    finished_unix_s: float | None = Field(None, description="Sweep end; None while it runs.")
    cluster: ClusterInfo = Field(..., description="The Ray cluster and the load generator.")
    ladder: Ladder = Field(..., description="Load applied to every strategy.")
    slo: Slo = Field(default_factory=Slo, description="Per-request target of goodput.")
    strategies: tuple[StrategyResult, ...] = Field((), description="Results per strategy, in the order run.")
    notes: tuple[str, ...] = Field((), description="Caveats of the whole sweep (e.g. a shared load-generator CPU).")


def goodput(records: Iterable[RequestRecord], slo: Slo, duration_s: float) -> Goodput:
    """Score a request log against `slo`; rates are over `duration_s` (0 gives rates of 0)."""
    records = list(records)
    ok = [r for r in records if r.ok]
    good = [r for r in ok
            if (slo.ttft_ms is None or (r.ttft_ms is not None and r.ttft_ms <= slo.ttft_ms))
            and (slo.tpot_ms is None or r.tpot_ms is None or r.tpot_ms <= slo.tpot_ms)]
    tokens = sum(r.output_tokens for r in good)
    return Goodput(requests_ok=len(ok), requests_meeting_slo=len(good),
                   fraction=len(good) / len(records) if records else 0.0,
                   requests_per_s=len(good) / duration_s if duration_s > 0 else 0.0,
                   output_tokens_per_s=tokens / duration_s if duration_s > 0 else 0.0)


def step_result(load: float, results: RunResults, records: list[RequestRecord], *, slo: Slo, run_dir: str) -> StepResult:
    """Summarise one ladder step's run and score its request log against `slo`."""
    m, d = results.metrics, results.duration_s
    return StepResult(
        load=load, run_dir=run_dir, duration_s=d, requests_total=results.requests.total,
        requests_failed=results.requests.failed, requests_per_s=results.requests.ok / d if d > 0 else 0.0,
        output_tokens=results.output_tokens, output_tokens_per_s=results.output_tokens_per_s,
        ttft_ms=Percentiles.of(m.get("TTFT")), itl_ms=Percentiles.of(m.get("ITL")),
        tpot_ms=Percentiles.of(m.get("TPOT")), e2e_ms=Percentiles.of(m.get("E2E")),
        goodput=goodput(records, slo, d), notes=results.notes,
    )


def with_slo(sweep: SweepResults, sweep_dir: str | Path, slo: Slo) -> SweepResults:
    """Re-score every step's goodput at `slo` from its requests.jsonl.

    Raises LoadTestError naming the missing logs when any step has none: a report must not show
    the new SLO beside goodput computed at the old one.
    """
    root = Path(sweep_dir)
    missing = [root / st.run_dir / "requests.jsonl" for s in sweep.strategies for st in s.steps
               if not (root / st.run_dir / "requests.jsonl").exists()]
    if missing:
        raise LoadTestError(
            f"cannot re-score at {slo.describe()}: {len(missing)} step(s) have no per-request log (e.g. {missing[0]}), "
            f"and goodput at another SLO needs every request's TTFT and TPOT. Re-run the sweep, or report at the "
            f"SLO it was scored at ({sweep.slo.describe()}) without --ttft-slo-ms/--tpot-slo-ms")
    strategies = []
    for s in sweep.strategies:
        steps = tuple(st.model_copy(update={"goodput": goodput(read_requests(root / st.run_dir / "requests.jsonl"),
                                                               slo, st.duration_s)}) for st in s.steps)
        strategies.append(s.model_copy(update={"steps": steps}))
    return sweep.model_copy(update={"slo": slo, "strategies": tuple(strategies)})


def schema_text() -> str:
    """The JSON Schema of SweepResults, as kept in sweep.schema.json."""
    return json.dumps(SweepResults.model_json_schema(), indent=1, sort_keys=True) + "\n"


def write_sweep(sweep: SweepResults, sweep_dir: str | Path) -> Path:
    """Write sweep.json and sweep.schema.json into `sweep_dir`; return the sweep.json path."""
    root = Path(sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / SWEEP_FILE
    tmp = path.with_suffix(".json.tmp")  # a reader never sees half a file (the sweep rewrites it per strategy)
    tmp.write_text(sweep.model_dump_json(indent=1) + "\n")
    tmp.replace(path)
    (root / SCHEMA_FILE).write_text(schema_text())
    return path


def load_sweep(path: str | Path) -> SweepResults:
    """Read a sweep.json, or the sweep.json inside a sweep dir; raise LoadTestError naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / SWEEP_FILE
    try:
        return SweepResults.model_validate(json.loads(p.read_text()))
    except OSError as e:
        raise LoadTestError(f"{p}: cannot read ({e.strerror or e}); give a sweep dir (with sweep.json) or the file") from e
    except (json.JSONDecodeError, ValidationError) as e:
        raise LoadTestError(f"{p}: not a fleetserve sweep.json (schema_version {SWEEP_SCHEMA_VERSION}): {e}") from None
