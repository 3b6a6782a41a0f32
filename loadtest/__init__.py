"""Load tests of the OpenAI API with Locust: the LLM user, load shapes, distributed runs, results.

Importing this package does not import locust (which gevent-patches its importer): locust
runs in subprocesses started by `run`, or under `locust -f loadtest/locustfile.py`. Only
loadtest.users, loadtest.locust_hooks and loadtest.locustfile import locust.

    plan = build_plan(models=["tiny-dense"], shape="poisson", rate_rps=5, users=32, duration_s=60)
    results = run("http://127.0.0.1:8000", plan, out_dir="runs/x", workers=2)
    results.metrics["TTFT"].p50, results.output_tokens_per_s

A strategy sweep deploys each layout of one model on a connected Ray cluster and runs a ladder
against it (`run_sweep`, Ray imported only inside); `write_report` turns its SweepResults
into a table, PNG plots and an HTML page (matplotlib imported only inside).
"""

from loadtest.arrivals import ArrivalCursor, TraceRow, load_trace, poisson_times
from loadtest.distributions import FixedLength, LengthDist, LogNormalLength, NormalLength, UniformLength, parse_length
from loadtest.errors import LoadTestError
from loadtest.plan import SHAPE_KINDS, LoadPlan, build_plan, host_from_config, models_from_config, parse_duration
from loadtest.results import (
    METRICS,
    SCHEMA_VERSION,
    MetricStats,
    RequestRecord,
    RunResults,
    TimelinePoint,
    load_results,
    read_requests,
    replay_trace,
)
from loadtest.runner import collect_results, run, write_results
from loadtest.report import ReportFiles, table_lines, write_report
from loadtest.shapes import ConstantShape, PoissonShape, SpikeShape, StepShape, TraceShape, plan_tick
from loadtest.strategies import Strategy, apply_strategy, cpu_refusal, parse_strategy
from loadtest.sweep import plan_sweep, run_sweep
from loadtest.sweep_results import (
    SWEEP_SCHEMA_VERSION,
    Goodput,
    Ladder,
    Slo,
    StepResult,
    StrategyResult,
    SweepResults,
    goodput,
    load_sweep,
    with_slo,
    write_sweep,
)
from loadtest.workload import LLMRequest, Workload

__all__ = [
    "LoadPlan", "build_plan", "models_from_config", "host_from_config", "parse_duration", "SHAPE_KINDS",
    "ConstantShape", "StepShape", "SpikeShape", "PoissonShape", "TraceShape", "plan_tick",
    "FixedLength", "UniformLength", "NormalLength", "LogNormalLength", "LengthDist", "parse_length",
    "poisson_times", "load_trace", "TraceRow", "ArrivalCursor", "LLMRequest", "Workload",
    "RunResults", "MetricStats", "RequestRecord", "TimelinePoint", "SCHEMA_VERSION", "METRICS",
    "load_results", "read_requests", "replay_trace", "run", "collect_results", "write_results", "LoadTestError",
    "Strategy", "parse_strategy", "apply_strategy", "cpu_refusal", "plan_sweep", "run_sweep",
    "SweepResults", "StrategyResult", "StepResult", "Ladder", "Slo", "Goodput", "SWEEP_SCHEMA_VERSION", "goodput",
    "load_sweep", "write_sweep", "with_slo", "write_report", "table_lines", "ReportFiles",
]
