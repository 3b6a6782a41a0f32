"""Locust wiring for a load plan: command-line options, the shape, per-process state, outputs, progress.

Imports locust, which gevent-patches the process: only locust processes import this module
(loadtest/locustfile.py calls `register(events)`). Data flow per process:

    init ──► plan (master/local: from --plan or the flat options; sent to workers in the spawn
     │        message as parsed_options.fleetserve_plan_json, so every process runs the same plan)
    test_start ──► ProcessRuntime (local/worker: workload share, request log)  ──► LLMUser
     │             progress greenlet (master/local: one "[loadtest] ..." line per interval)
    request events ──► runtime.add_event (each process's own totals)
    quitting ──► process-<proc>.json + requests-<proc>.jsonl (local/worker)
                 locust-stats.json: the merged Locust stats (master/local)

Response times are bucketed to 3 significant digits instead of Locust's 2 (which rounds
147 ms to 150), so a 5 ms TTFT difference stays visible in percentiles.
"""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import gevent
import locust.stats
from locust import LoadTestShape
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsError

from loadtest._runtime import ProcessRuntime
from loadtest.errors import LoadTestError
from loadtest.plan import SHAPE_KINDS, LoadPlan, build_plan, models_from_config, parse_duration
from loadtest.results import METRIC_UNITS, metric_stats
from loadtest.shapes import plan_tick
from loadtest.users import RUNTIME_ATTR, LLMRequestError

__all__ = ["register", "PlanShape", "plan_from_options", "bucket_3_significant", "PROGRESS_PREFIX",
           "PLAN_ENV", "OUT_ENV", "API_KEY_ENV"]


PLAN_ENV = "FLEETSERVE_LOADTEST_PLAN"
OUT_ENV = "FLEETSERVE_LOADTEST_OUT"
API_KEY_ENV = "FLEETSERVE_API_KEY"
PROGRESS_PREFIX = "[loadtest]"
_PLAN_OPT = "fleetserve_plan_json"  # not a Locust default option, so the master forwards it to workers


def bucket_3_significant(response_time: float | None) -> float:
    """Round a response time to 3 significant digits (Locust's default keeps 2)."""
    if not response_time or response_time <= 0:
        return 0.0
    return float(f"{response_time:.3g}")


def add_arguments(parser) -> None:
    """Add the plan's options to Locust's parser (all processes; workers get the master's values)."""
    a = parser.add_argument
    a("--plan", env_var=PLAN_ENV, default="", help="LoadPlan JSON file (as written by `fleetserve loadtest run`); "
      "when given, the plan options below are ignored")
    a("--out-dir", env_var=OUT_ENV, default="", help="Write the request log, per-process totals and merged stats here")
    a("--model", default="", help="Model name(s), comma-separated; default: every model of --app-config")
    a("--app-config", default="", help="fleetserve config YAML (default: $FLEETSERVE_CONFIG, else the embedded one)")
    a("--endpoint", default="chat", choices=["chat", "completions"], help="/v1/chat/completions or /v1/completions")
    a("--shape", default="constant", choices=list(SHAPE_KINDS), help="Load shape; -u/-r/-t give users, spawn rate, duration")
    a("--rate", type=float, default=0.0, help="poisson: mean requests per second over all workers")
    a("--trace", default="", help="trace: JSONL of t_s (or start_unix_s), input_tokens, output_tokens")
    a("--time-scale", type=float, default=1.0, help="trace: replay speed")
    a("--step-users", type=int, default=0, help="step: users added per step (default: -u)")
    a("--step-time", default="10s", help="step: step length")
    a("--max-users", type=int, default=0, help="step: user cap (0: none)")
    a("--spike-users", type=int, default=0, help="spike: users during the spike (default: 4 x -u)")
    a("--spike-at", default="10s", help="spike: start")
    a("--spike-for", default="10s", help="spike: length")
    a("--input-len", default="128", help="Prompt tokens: 128, uniform:64-256, normal:128,32, lognormal:128,0.5")
    a("--output-len", default="128", help="Output tokens (max_tokens, with ignore_eos), same forms")
    a("--dataset", default="", help="JSONL prompts instead of synthetic ones")
    a("--seed", type=int, default=0, help="Seed of lengths, prompts and arrivals")
    a("--drain", default="5s", help="After the duration, wait this long for requests in flight")
    a("--think-time", type=float, default=0.0, help="Closed loop: seconds between a user's requests")


def plan_from_options(opts) -> LoadPlan:
    """Build the plan from Locust's parsed options: --plan, else the flat options with -u/-r/-t."""
    if getattr(opts, _PLAN_OPT, None):
        return LoadPlan.model_validate_json(getattr(opts, _PLAN_OPT))
    if opts.plan:
        return LoadPlan.from_file(opts.plan)
    models = [m.strip() for m in opts.model.split(",") if m.strip()]
    config = None
    if opts.app_config or not models:
        from serve_app.schema import load_config

        config = load_config(opts.app_config or None)
    return build_plan(
        models=models_from_config(config, models), shape=opts.shape, users=opts.num_users or 1,
        spawn_rate=opts.spawn_rate, duration_s=opts.run_time or None, rate_rps=opts.rate or None,
        trace_path=opts.trace or None, time_scale=opts.time_scale, step_users=opts.step_users or None,
        step_s=parse_duration(opts.step_time, field="--step-time"), max_users=opts.max_users or None,
        spike_users=opts.spike_users or None, spike_at_s=parse_duration(opts.spike_at, field="--spike-at"),
        spike_s=parse_duration(opts.spike_for, field="--spike-for"), input_len=opts.input_len,
        output_len=opts.output_len, endpoint=opts.endpoint, dataset_path=opts.dataset or None, seed=opts.seed,
        drain_s=parse_duration(opts.drain, field="--drain") or 0.0, think_time_s=opts.think_time,
    )


class PlanShape(LoadTestShape):
    """The plan's shape, with Locust's clock passed in (`loadtest.shapes` holds the logic)."""

    use_common_options = True  # -u/-r/-t feed the plan when no --plan is given

    def tick(self):
        plan: LoadPlan = self.runner.environment.fleetserve_plan
        return plan_tick(plan.shape, self.get_run_time(), duration_s=plan.duration_s, drain_s=plan.drain_s)


class _Hooks:
    """The listeners, with the process's state between them."""

    def __init__(self) -> None:
        self.t0_unix: float | None = None
        self.progress: gevent.Greenlet | None = None
        self.workers = 0
        self._env = None

    def on_init(self, environment, **_kw) -> None:
        self._env = environment
        locust.stats.bucket_response_time = bucket_3_significant
        if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
            return  # workers take the master's plan at test start
        plan = plan_from_options(environment.parsed_options)
        environment.fleetserve_plan = plan
        setattr(environment.parsed_options, _PLAN_OPT, plan.model_dump_json())

    def on_test_start(self, environment, **_kw) -> None:
        runner, opts = environment.runner, environment.parsed_options
        plan = plan_from_options(opts)
        environment.fleetserve_plan = plan
        self.t0_unix = time.time()
        if isinstance(runner, MasterRunner):
            self.workers = len(runner.clients)  # at quit time they have already left
        out_dir = getattr(opts, "out_dir", "") or None
        if isinstance(runner, WorkerRunner):
            count = int(getattr(opts, "expect_workers", 1) or 1)
            index = runner.worker_index
            if index >= count:
                if plan.shape.open_loop:
                    raise LoadTestError(f"worker index {index} but --expect-workers {count}: an open-loop schedule is "
                                       f"split by the worker count; start the master with --expect-workers N")
                count = index + 1
            proc = f"worker-{index}"
        else:
            index, count, proc = 0, 1, "local"
        if not isinstance(runner, MasterRunner):
            old = getattr(environment, RUNTIME_ATTR, None)
            if old is not None:
                old.close()
            key = os.environ.get(API_KEY_ENV)
            setattr(environment, RUNTIME_ATTR, ProcessRuntime(
                plan, proc=proc, index=index, count=count, out_dir=out_dir, t0_mono=time.monotonic(),
                t0_unix=self.t0_unix, headers={"Authorization": f"Bearer {key}"} if key else None))
        if not isinstance(runner, WorkerRunner) and self.progress is None:
            self.progress = gevent.spawn(self._progress_loop, environment, plan.progress_interval_s)

    def on_request(self, request_type, name, response_time, response_length, exception=None, **_kw) -> None:
        rt = getattr(self._env, RUNTIME_ATTR, None)
        if rt is not None:
            rt.add_event(request_type, name, response_length, exception is not None)

    def on_quitting(self, environment, **_kw) -> None:
        if self.progress is not None:
            self.progress.kill(block=False)
            self.progress = None
        rt = getattr(environment, RUNTIME_ATTR, None)
        if rt is not None:
            rt.close()
        out_dir = getattr(environment.parsed_options, "out_dir", "") if environment.parsed_options else ""
        if out_dir and not isinstance(environment.runner, WorkerRunner) and self.t0_unix is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "locust-stats.json").write_text(json.dumps(self._stats_doc(environment)) + "\n")

    def _stats_doc(self, environment) -> dict:
        stats = environment.runner.stats
        entries = [{
            "model": e.method, "metric": e.name, "num_requests": e.num_requests, "num_failures": e.num_failures,
            "total_response_time": e.total_response_time, "min_response_time": e.min_response_time,
            "max_response_time": e.max_response_time, "total_content_length": e.total_content_length,
            "response_times": {repr(float(k)): v for k, v in e.response_times.items()},
            "num_reqs_per_sec": {str(k): v for k, v in e.num_reqs_per_sec.items()},
        } for e in stats.entries.values() if e.num_requests or e.num_failures]
        errors = [{"model": err.method, "metric": err.name, "error": _error_text(err.error), "occurrences": err.occurrences}
                  for err in stats.errors.values()]
        plan = getattr(environment, "fleetserve_plan", None)
        return {"t0_unix_s": self.t0_unix, "end_unix_s": time.time(), "host": environment.host, "workers": self.workers,
                "plan": plan.model_dump(mode="json") if plan else None, "entries": entries, "errors": errors}

    def _progress_loop(self, environment, interval_s: float) -> None:
        while True:
            gevent.sleep(interval_s)
            print(progress_line(environment, time.time() - (self.t0_unix or time.time())), flush=True)


def _error_text(error) -> str:
    """The failure message without its exception wrapper (workers send the repr, a local run the object)."""
    text = StatsError.parse_error(error)
    prefix = f"{LLMRequestError.__name__}("
    if text.startswith(prefix) and text.endswith(")"):
        try:
            return str(ast.literal_eval(text[len(prefix):-1]))
        except (ValueError, SyntaxError):
            pass
    return text


def progress_line(environment, elapsed_s: float) -> str:
    """One line of live stats: users, requests, failures, rate, median latencies, throughput."""
    runner = environment.runner
    by_metric: dict[str, list[dict]] = {}
    rps = 0.0
    tokens = 0
    for e in runner.stats.entries.values():
        by_metric.setdefault(e.name, []).append({
            "num_requests": e.num_requests, "num_failures": e.num_failures, "total_response_time": e.total_response_time,
            "min_response_time": e.min_response_time, "max_response_time": e.max_response_time,
            "response_times": e.response_times})
        if e.name == "E2E":
            rps += e.current_rps
            tokens += e.total_content_length
    m = {k: metric_stats(v, unit=METRIC_UNITS.get(k, "ms")) for k, v in by_metric.items()}
    e2e = m.get("E2E")
    parts = [f"{PROGRESS_PREFIX} {elapsed_s:5.0f}s users={runner.user_count}",
             f"done={e2e.count if e2e else 0} fail={e2e.failures if e2e else 0} rps={rps:.1f}"]
    for name in ("TTFT", "ITL", "E2E", "LAG"):
        if name in m and m[name].p50 is not None:
            parts.append(f"{name.lower()}_p50={m[name].p50:.1f}ms")
    parts.append(f"out_tok/s={tokens / elapsed_s if elapsed_s > 0 else 0:.0f}")
    return " ".join(parts)


def register(events) -> None:
    """Attach the plan's options and listeners to a Locust `events` object (locust.events in a locustfile)."""
    hooks = _Hooks()
    events.init_command_line_parser.add_listener(add_arguments)
    events.init.add_listener(hooks.on_init)
    events.test_start.add_listener(hooks.on_test_start)
    events.request.add_listener(hooks.on_request)
    events.quitting.add_listener(hooks.on_quitting)
