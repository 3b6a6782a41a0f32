"""Profile the serving front end under load with py-spy: `python -m bench.profile_replica --stack fleetserve`.

    start the stack (bench._stacks, the same settings as bench.serving_overhead)
      ──► warm-up ──► Locust at --concurrency for --duration + margins, in a thread
      ──► meanwhile `py-spy record --format raw` on the front-end process for --duration:
          fleetserve: the Serve replica (vLLM's OpenAI app inside Serve); raw vLLM: its API server
      ──► stop ──► report.md: self time by source (bench._profile), top leaf frames, the
          inclusive time of fleetserve's and Serve's own frames; profile.txt (raw stacks)

py-spy samples from outside the process (--nonblocking, so the target is never paused), but
on 2 cores its own CPU competes with the stack: read shares, not tok/s, from a profiled run.
Needs py-spy (the `dev` extra) and ptrace rights over the stack's processes (root here).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import _procs
from bench._load import locust_run
from bench._measure import cpu_by_role, process_role, role_group
from bench._profile import inclusive, parse_collapsed, self_by_source, top_self
from bench._stacks import REPO, STACK_KEYS, EngineSettings, build_stack
from bench.serving_overhead import wait_ready

__all__ = ["main", "render_profile"]

FRONT = "replica / API server"


def _front_pid(root: int) -> tuple[int, str]:
    for pid in _procs.descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if role_group(process_role(cmd)) == FRONT:
            return pid, process_role(cmd)
    raise RuntimeError(f"no {FRONT} process in the tree of pid {root}")


def render_profile(text: str, *, title: str) -> str:
    """The Markdown summary of one raw py-spy profile."""
    stacks = parse_collapsed(text)
    samples = sum(n for _, n in stacks)
    lines = [f"### {title}", "", f"{samples:,} samples (non-idle threads).", "",
             "| source (leaf frame) | share of samples |", "|---|---|"]
    lines += [f"| {src} | {share:.1%} |" for src, share in self_by_source(stacks).items()]
    lines += ["", "| top leaf frames | source | share |", "|---|---|---|"]
    lines += [f"| `{f}` | {src} | {share:.1%} |" for f, src, share in top_self(stacks, 20)]
    for src in ("fleetserve (serve_app)", "Ray Serve (replica, ASGI wrappers, metrics)"):
        inc = inclusive(stacks, src, 12)
        if inc:
            lines += ["", f"| {src}: inclusive (the frame and what it called) | share |", "|---|---|"]
            lines += [f"| `{f}` | {share:.1%} |" for f, share in inc]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Start, load, profile and stop one stack; print and write the summary."""
    ap = argparse.ArgumentParser(prog="python -m bench.profile_replica", description=__doc__.splitlines()[0])
    ap.add_argument("--stack", default="fleetserve", choices=STACK_KEYS)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds py-spy samples (the load runs 8 s longer).")
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second.")
    ap.add_argument("--out", default="runs/profile-replica")
    args = ap.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("py-spy not found: .venv/bin/pip install -e '.[dev]'", file=sys.stderr)
        return 2
    from serve_app.tiny_models import ensure_tiny_model

    settings = EngineSettings(model_dir=str(ensure_tiny_model("dense")))
    out = Path(args.out).resolve() / args.stack
    out.mkdir(parents=True, exist_ok=True)
    spec = build_stack(args.stack, settings, work_dir=out)
    tree = _procs.start(spec.key, spec.argv, env=spec.env, log_path=out / "server.log", cwd=str(REPO))
    try:
        url, startup_s = wait_ready(spec, tree, settings.served_name)
        pid, role = _front_pid(tree.pid)
        print(f"{spec.label} up in {startup_s:.1f} s at {url}; profiling pid {pid} ({role})", flush=True)
        locust_run(url, settings.served_name, concurrency=args.concurrency, duration_s=5.0, input_len=64,
                   output_len=64, out_dir=out / "warmup")
        figures: dict = {}
        before = _procs.tree_cpu_s(tree.pid)
        load = threading.Thread(target=lambda: figures.update(run=locust_run(
            url, settings.served_name, concurrency=args.concurrency, duration_s=args.duration + 8.0, input_len=64,
            output_len=64, out_dir=out / "load")))
        load.start()
        time.sleep(4.0)  # Locust's start and spawn
        raw = out / "profile.txt"
        subprocess.run([pyspy, "record", "--pid", str(pid), "--format", "raw", "--full-filenames", "--nolineno",
                        "--nonblocking", "--rate", str(args.rate), "--duration", str(int(args.duration)), "-o", str(raw)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=args.duration + 60)
        load.join()
        cpu = cpu_by_role(before, _procs.tree_cpu_s(tree.pid))
    finally:
        _procs.stop(tree)
    run = figures["run"]
    head = (f"{spec.label}, Locust c={args.concurrency}: {run.output_tokens_per_s:,.0f} tok/s while profiled "
            f"(py-spy at {args.rate} Hz, --nonblocking); CPU s by role over the run: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    report = head + "\n\n" + render_profile(raw.read_text(), title=f"py-spy: {role}, pid {pid}")
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
