"""Front-end capacity, side by side in one run: the most output tokens/s one replica's front end carries.

    .venv/bin/python -m bench.frontend_capacity --levels 32,64,128,256 --rounds 2 --duration 5 --out runs/frontend-capacity

Issue 16 item 4. The engine is made NOT the limit: the tiny dense model, tiny prompts, short
outputs (--output-len 16) and a large batch (--max-num-seqs 256), so each request costs the
front end its fixed work (HTTP, OpenAI layer, tokenizing, detokenizing, SSE) for few engine
steps. Stacks (--stacks, KIND-xN: KIND vllm or fleetserve, N front-end processes per engine):

    vllm-xN        `vllm serve --api-server-count N` (bench/vllm_serve.py)
    fleetserve-xN  fleetserve as shipped (bench._stacks "fleetserve") with models[0].front_ends: N

--rounds times, every stack in turn (the stack order rotates per round) is started, warmed up,
run at every level and stopped, so a busy minute on this shared machine lands on all stacks
alike and the ratios stay fair. One stack at a time: an idle fleetserve (Ray's daemons, Serve's
controller and proxies) used ~15 % of a core, which would have been taken from whichever stack
was being measured beside it (a first version kept all four up).

    round r: for stack in rotate(stacks, r):
      start (first chat completion) ──► idle settle ──► warm-up load + probe streams
      ──► for c in levels: CPU snapshot of the stack's tree ──► Locust run (c users, --duration s)
                            ──► CPU again: the stack's by process role; the Locust process's
      ──► SIGTERM, SIGKILL what is left of its tree

Reports per stack tok/s at each level, the peak and whether throughput stopped rising there,
CPU ms per 1,000 output tokens by role group at the peak (front end vs engine), and ratios to
raw vLLM with the same process count (bench._capacity). Writes results.json and report.md.
Locust only: `vllm bench serve` is not sized by time, and one generator keeps the run short.

On 2 cores vLLM's CPU worker spins on one of them, so N = 2 front ends share the other with the
engine core, Ray's daemons and the load generator: the run measures that, not what N = 2 gives on a replica with spare cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

from bench import _procs
from bench._capacity import render_capacity_report
from bench._load import locust_run
from bench._measure import busiest_front_end_process_s, cpu_by_process, cpu_by_role
from bench._probe import stream_probe
from bench._stacks import EngineSettings, StackSpec, build_stack
from bench.serving_overhead import IDLE_SETTLE_S, _machine, _versions, bring_up

__all__ = ["main", "parse_stack_key", "rotate"]

KINDS = ("vllm", "fleetserve")
DEFAULT_STACKS = "vllm-x1,vllm-x2,fleetserve-x1,fleetserve-x2"
PROBES = 3


def _log(msg: str) -> None:
    print(f"[capacity {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_stack_key(key: str) -> tuple[str, int]:
    """'fleetserve-x2' -> ('fleetserve', 2). Raises ValueError naming the key and the form."""
    kind, _, n = key.rpartition("-x")
    if kind not in KINDS or not n.isdigit() or not 1 <= int(n) <= 16:
        raise ValueError(f"stack {key!r}: use KIND-xN with KIND one of {', '.join(KINDS)} and N 1 to 16, "
                         "e.g. vllm-x2")
    return kind, int(n)


def rotate(items: list, by: int) -> list:
    """`items` started at index `by` (mod len): round r's stack order."""
    if not items:
        return []
    k = by % len(items)
    return items[k:] + items[:k]


def _children_cpu_s() -> float:
    """CPU seconds of this process's reaped children: the Locust runs, once each has exited."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _spec(key: str, settings: EngineSettings, out: Path) -> StackSpec:
    kind, n = parse_stack_key(key)
    spec = build_stack(kind, settings, work_dir=out / key, front_ends=n)
    return dataclasses.replace(spec, key=key)  # log dirs and results by our key, not the base stack's


def _bring_up(spec: StackSpec, settings: EngineSettings, out: Path, result: dict) -> _procs.ProcessTree | None:
    """Start one stack; None (with result["error"]) when it did not come up (start_stack retries once)."""
    if (up := bring_up(spec, settings, out, result)) is None:
        return None
    tree, url, startup_s = up
    result.update(url=url, startup_s=round(startup_s, 2))
    return tree


def _warm(url: str, settings: EngineSettings, args: argparse.Namespace, out_dir: Path) -> tuple[list[dict], str | None]:
    """Warm-up load, then probe streams; return the probes and why the stack is refused (None: it streams)."""
    locust_run(url, settings.served_name, concurrency=max(args.levels), duration_s=args.warmup,
               input_len=args.input_len, output_len=args.output_len, out_dir=out_dir)
    # Probes use 64 tokens: the burst check needs a stream long enough to judge.
    probes = [stream_probe(url, settings.served_name, max_tokens=64) for _ in range(PROBES)]
    bad = [p for p in probes if p.status != 200 or p.check.burst]
    refused = f"{len(bad)}/{PROBES} probe streams burst or failed ({bad[0].check.reason})" if len(bad) > PROBES // 2 else None
    return [p.check.__dict__ | {"status": p.status} for p in probes], refused


def _one_run(stack: dict, tree: _procs.ProcessTree, c: int, rnd: int, *, settings: EngineSettings,
             args: argparse.Namespace, out: Path) -> dict:
    """One Locust run on `stack`, with the CPU of its process tree by role and of the Locust process."""
    before = _procs.tree_cpu_s(tree.pid)
    gen0 = _children_cpu_s()
    lc = locust_run(stack["url"], settings.served_name, concurrency=c, duration_s=args.duration, input_len=args.input_len,
                    output_len=args.output_len, out_dir=out / stack["key"] / f"c{c}" / f"round-{rnd}", seed=rnd)
    loadgen = _children_cpu_s() - gen0
    after = _procs.tree_cpu_s(tree.pid)
    run = lc.as_dict() | {"round": rnd, "cpu_s_by_role": cpu_by_role(before, after), "loadgen_cpu_s": round(loadgen, 3),
                          "busiest_front_end_cpu_s": busiest_front_end_process_s(cpu_by_process(before, after))}
    _log(f"{stack['label']} c={c} round {rnd}: {lc.output_tokens_per_s:,.0f} tok/s, TTFT p50 {lc.ttft_p50_ms} ms, "
         f"ok {lc.requests_ok} failed {lc.requests_failed}; Locust {loadgen:.1f} CPU s"
         + ("" if lc.valid else f"  -> REFUSED ({lc.check.reason if lc.check else 'failed requests'})"))
    return run


def _measure_round(stack: dict, rnd: int, *, settings: EngineSettings, args: argparse.Namespace, out: Path) -> None:
    """Start the stack, warm it up, run every level into stack["levels"], stop it; failures go to its notes."""
    spec = _spec(stack["key"], settings, out)  # fresh ports every round: no wait for the last round's to be free
    attempt: dict = {}
    tree = _bring_up(spec, settings, out / f"round-{rnd}", attempt)
    stack["notes"] += [f"round {rnd}: {n}" for n in attempt.get("notes", [])]
    if tree is None:
        stack["notes"].append(f"round {rnd}: {attempt['error']}")
        return
    try:
        stack["url"] = attempt["url"]
        stack.setdefault("startup_runs_s", []).append(attempt["startup_s"])
        time.sleep(IDLE_SETTLE_S)
        probes, refused = _warm(stack["url"], settings, args, out / stack["key"] / f"warmup-{rnd}")
        stack.setdefault("probes", []).extend(probes)
        if refused:
            _log(f"{spec.label}: REFUSED in round {rnd}: {refused}")
            stack["notes"].append(f"round {rnd}: {refused}; not measured")
            return
        for c in args.levels:
            if not tree.alive():
                stack["notes"].append(f"round {rnd}: exited with {tree.popen.returncode} before c={c}")
                return
            try:
                run = _one_run(stack, tree, c, rnd, settings=settings, args=args, out=out)
            except Exception as e:  # the other levels and stacks go on; this run says why it has no figures
                _log(f"{stack['key']} c={c} round {rnd}: FAILED: {type(e).__name__}: {e}")
                stack["notes"].append(f"round {rnd} c={c}: {type(e).__name__}: {e}")
                continue
            stack["levels"][str(c)]["runs"].append(run)
    finally:
        stack.setdefault("stop_runs_s", []).append(round(_procs.stop(tree), 2))
        _log(f"{spec.label}: stopped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.frontend_capacity", description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default=DEFAULT_STACKS, help="Comma-separated KIND-xN, KIND vllm or fleetserve.")
    ap.add_argument("--levels", default="32,64,128,256", help="Concurrency levels (closed-loop users), ascending.")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds over all levels and stacks.")
    ap.add_argument("--duration", type=float, default=5.0, help="Seconds of load per run.")
    ap.add_argument("--warmup", type=float, default=4.0, help="Seconds of warm-up load per stack (not reported).")
    ap.add_argument("--input-len", type=int, default=8, help="Prompt tokens (approximate for Locust's prompts).")
    ap.add_argument("--output-len", type=int, default=16, help="Output tokens per request (ignore_eos).")
    ap.add_argument("--max-num-seqs", type=int, default=256, help="Engine batch size, same for every stack.")
    ap.add_argument("--out", default="runs/frontend-capacity", help="Output dir (results.json, report.md, logs).")
    args = ap.parse_args(argv)
    args.stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    for key in args.stacks:
        try:
            parse_stack_key(key)
        except ValueError as e:
            ap.error(f"--stacks: {e}")
    if len(set(args.stacks)) != len(args.stacks):
        ap.error(f"--stacks {','.join(args.stacks)}: each stack once")
    try:
        args.levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--levels {args.levels!r}: use comma-separated integers, e.g. 16,32,64")
    if not args.levels or args.levels[0] < 1 or args.rounds < 1 or args.max_num_seqs < 1:
        ap.error("--levels must be integers >= 1, --rounds and --max-num-seqs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a stack failed or a run was refused."""
    args = parse_args(argv)
    from serve_app.tiny_models import ensure_tiny_model

    settings = EngineSettings(model_dir=str(ensure_tiny_model("dense")), max_num_seqs=args.max_num_seqs)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join([Path(sys.executable).name, "-m", "bench.frontend_capacity", *(argv or sys.argv[1:])]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(), "versions": _versions(),
           "settings": settings.__dict__ | {"engine_kwargs": settings.engine_kwargs()},
           "load": {"levels": args.levels, "rounds": args.rounds, "duration_s": args.duration,
                    "input_len": args.input_len, "output_len": args.output_len, "warmup_s": args.warmup},
           "stacks": {}}
    for key in args.stacks:
        kind, n = parse_stack_key(key)
        spec = _spec(key, settings, out)
        doc["stacks"][key] = {"key": key, "label": spec.label, "kind": kind, "front_ends": n, "notes": list(spec.notes),
                              "levels": {str(c): {"runs": []} for c in args.levels}}
    for rnd in range(args.rounds):
        for key in rotate(list(args.stacks), rnd):
            _measure_round(doc["stacks"][key], rnd, settings=settings, args=args, out=out)
            (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    for s in doc["stacks"].values():
        if not any(lv["runs"] for lv in s["levels"].values()):
            s["error"] = "no run measured: " + ("; ".join(s["notes"][-2:]) or "?")
            del s["levels"]
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    report = render_capacity_report(doc)
    (out / "report.md").write_text(report)
    print("\n" + report)
    bad = [k for k, s in doc["stacks"].items() if s.get("error")
           or any(not r["valid"] for lv in s.get("levels", {}).values() for r in lv["runs"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
