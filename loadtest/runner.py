"""Run a load plan headless from a laptop: one local locust process, or a master and N workers.

No locust import here: locust runs in subprocesses (`python -m locust -f loadtest/locustfile.py`),
so callers (the CLI, a sweep, tests) are never gevent-patched.

    run(host, plan, workers=2, out_dir=...)
      ├─► out/plan.json ──► master: --master --expect-workers 2 --master-bind-host 127.0.0.1
      │                             --master-bind-port <free> --headless --csv --html
      │                     worker-0, worker-1: --worker --master-port <same>
      ├─ master stdout ──► out/master.log, "[loadtest] ..." lines ──► progress callback
      ├─ metrics=[URL, ...]: a Scraper thread GETs the app's Prometheus endpoints every second
      └─ after exit: collect_results(out) (+ the scraped ServerSeries) ──► out/results.json (RunResults),
                     out/replay-trace.jsonl

The run ends when the plan's shape returns None (duration + drain), not by Locust's -t: in
distributed mode Locust's master gives workers only 0.5 s to send their final stats after
-t, so requests still in flight would be missing from the master's totals. Sending stops at
`duration_s`; during `drain_s` requests finish and workers report (every 3 s).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from loadtest.arrivals import load_trace
from loadtest.errors import LoadTestError
from loadtest.plan import LoadPlan
from loadtest.results import RequestRecord, RunResults, build_results, read_requests, replay_trace
from loadtest.scraper import Scraper
from loadtest.server_series import ServerSeries, series_note
from cluster.ray_env import free_local_port

__all__ = ["run", "collect_results", "write_results", "with_server_series", "LOCUSTFILE", "STARTUP_TIMEOUT_S"]

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
STARTUP_TIMEOUT_S = 60.0
"""Budget for locust processes to start and workers to connect, on top of the plan's own time."""
_PROGRESS_PREFIX = "[loadtest]"  # same as loadtest.locust_hooks.PROGRESS_PREFIX (not imported: it imports locust)
_RUN_FILES = ("requests-*.jsonl", "process-*.json", "locust-stats.json", "requests.jsonl", "results.json",
              "replay-trace.jsonl")


def run(host: str, plan: LoadPlan, *, out_dir: str | Path, workers: int = 0,
        progress: Callable[[str], None] | None = print, loglevel: str = "WARNING",
        python: str = sys.executable, metrics: Sequence[str] = (), metrics_interval_s: float = 1.0) -> RunResults:
    """Run `plan` against `host` with `workers` locust workers (0: one local process); return the results.

    Writes plan.json, results.json, requests.jsonl, locust_*.csv, report.html and the
    processes' logs into `out_dir`. `progress` receives one line every plan.progress_interval_s.
    `metrics`: the app's Prometheus endpoints (one per Ray node), scraped every `metrics_interval_s`
    from before locust starts until it exits, into `results.server` (a failed scrape is counted, never fatal).
    Raises LoadTestError when locust fails to start or run, with the tail of its log.
    """
    if workers < 0:
        raise LoadTestError(f"workers={workers} must be >= 0 (0 runs one local locust process)")
    plan = _with_duration(plan)
    budget = plan.duration_s + plan.drain_s + plan.drain_s + STARTUP_TIMEOUT_S
    # Bounded by the run's own budget: the thread stops by itself even if this call is interrupted.
    scraper = Scraper(metrics, interval_s=metrics_interval_s, max_s=budget + 30)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _RUN_FILES:  # a rerun into the same dir must not mix in old files
        for old in out.glob(pattern):
            old.unlink()
    plan_path = plan.to_file(out / "plan.json")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = [python, "-m", "locust", "-f", str(LOCUSTFILE), "--plan", str(plan_path), "--out-dir", str(out),
              "--host", host, "--loglevel", loglevel]
    head = common + ["--headless", "--only-summary", "--csv", str(out / "locust"), "--html", str(out / "report.html"),
                     "--stop-timeout", str(math.ceil(plan.drain_s)), "--exit-code-on-error", "0"]
    procs: list[subprocess.Popen] = []
    logs = []
    scraper.start()
    try:
        if workers:
            port = free_local_port()
            head += ["--master", "--expect-workers", str(workers), "--master-bind-host", "127.0.0.1",
                     "--master-bind-port", str(port), "--expect-workers-max-wait", str(int(STARTUP_TIMEOUT_S))]
        master = subprocess.Popen(head, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, cwd=out)
        procs.append(master)
        for i in range(workers):
            log = open(out / f"worker-{i}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(common + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                          stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out))
        tee = threading.Thread(target=_tee, args=(master, out / "master.log", progress), daemon=True)
        tee.start()
        try:
            code = master.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"locust master still running after {budget:.0f} s (duration + drain + startup); "
                                f"stopped it. Log tail:\n{_tail(out / 'master.log')}") from None
        tee.join(timeout=5)
        for p in procs[1:]:
            try:
                p.wait(timeout=30)  # workers quit when the master tells them to
            except subprocess.TimeoutExpired:
                pass
        if code != 0 or not (out / "locust-stats.json").exists():
            raise LoadTestError(f"locust master exited with code {code}; log tail:\n{_tail(out / 'master.log')}")
    finally:
        scraper.stop()
        for p in procs:  # only the processes this call started
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for log in logs:
            log.close()
    results = collect_results(out)
    if metrics:
        results = with_server_series(results, scraper.series(t0_unix_s=results.started_unix_s))
    write_results(results, out)
    return results


def with_server_series(results: RunResults, server: ServerSeries) -> RunResults:
    """Attach `server` to `results`, with notes on failed scrapes and models the scrape never saw."""
    notes = results.notes + tuple(series_note(server, results.plan.models))
    return results.model_copy(update={"server": server, "notes": notes})


def write_results(results: RunResults, out_dir: str | Path) -> Path:
    """Write results.json and replay-trace.jsonl (the autoscaling replay's input) into `out_dir`."""
    out = Path(out_dir)
    (out / "replay-trace.jsonl").write_text("".join(json.dumps(p) + "\n" for p in replay_trace(results)))
    path = out / "results.json"
    path.write_text(results.model_dump_json(indent=1) + "\n")
    return path


def collect_results(out_dir: str | Path) -> RunResults:
    """Build RunResults from a run's files (locust-stats.json, process-*.json, requests-*.jsonl).

    Merges the per-process request logs into requests.jsonl (sorted by start). Works for a
    plain `locust -f loadtest/locustfile.py --out-dir DIR` run too, once every process has exited.
    """
    out = Path(out_dir)
    try:
        stats = json.loads((out / "locust-stats.json").read_text())
    except OSError as e:
        raise LoadTestError(f"{out}/locust-stats.json is missing: the locust master (or local process) did not "
                            f"finish, or ran without --out-dir {out}") from e
    parts = sorted(out.glob("requests-*.jsonl"))
    if parts:
        records: list[RequestRecord] = sorted((r for p in parts for r in read_requests(p)), key=lambda r: r.start_unix_s)
        with open(out / "requests.jsonl", "w") as f:
            for r in records:
                f.write(r.model_dump_json() + "\n")
        for p in parts:
            p.unlink()
    elif (out / "requests.jsonl").exists():
        records = read_requests(out / "requests.jsonl")
    else:
        records = []
    processes = [json.loads(p.read_text()) for p in sorted(out.glob("process-*.json"))]
    files = {k: v for k, v in {"plan": "plan.json", "requests": "requests.jsonl", "csv_prefix": "locust",
                               "html": "report.html", "master_log": "master.log"}.items()
             if k == "csv_prefix" or (out / v).exists()}
    return build_results(stats=stats, processes=processes, records=records, plan=LoadPlan.model_validate(stats["plan"]),
                         host=stats["host"], workers=stats["workers"], files=files)


def _with_duration(plan: LoadPlan) -> LoadPlan:
    if plan.duration_s is not None:
        return plan
    if plan.shape.kind == "trace":  # replay the whole trace
        last = load_trace(plan.shape.path, time_scale=plan.shape.time_scale)[-1].t_s
        return plan.model_copy(update={"duration_s": last + 0.001})
    raise LoadTestError("plan.duration_s is not set: a headless run needs a duration (e.g. --duration 60s)")


def _tee(proc: subprocess.Popen, log_path: Path, progress: Callable[[str], None] | None) -> None:
    with open(log_path, "w") as log:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            log.flush()
            if progress is not None and line.startswith(_PROGRESS_PREFIX):
                progress(line.rstrip("\n"))


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
