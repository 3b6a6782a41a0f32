"""Start one benchmark stack and keep it up for profiling: `python -m bench.hold fleetserve`.

Prints the URL and the stack's process tree (pid, nice, command) so `py-spy dump/record --pid`
can be pointed at the right process, then waits for Ctrl-C/SIGTERM and stops exactly that
tree. Same command lines and engine settings as bench.serving_overhead.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from pathlib import Path

from bench import _procs
from bench._stacks import REPO, STACK_KEYS, EngineSettings, build_stack
from bench.serving_overhead import wait_ready


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:110]
        nice = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid:>7} nice {nice:>3}  {cmd}"


def main() -> None:
    """Start the stack, print where it is, hold it until a stop signal."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stack", choices=STACK_KEYS)
    ap.add_argument("--omp-threads-bind", default="auto")
    ap.add_argument("--omp-reserved-cpus", type=int, default=1)
    args = ap.parse_args()
    from serve_app.tiny_models import ensure_tiny_model

    settings = EngineSettings(model_dir=str(ensure_tiny_model("dense")), omp_threads_bind=args.omp_threads_bind,
                              omp_reserved_cpus=args.omp_reserved_cpus)
    work = Path(tempfile.mkdtemp(prefix=f"bench-hold-{args.stack}-"))
    spec = build_stack(args.stack, settings, work_dir=work)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    tree = _procs.start(spec.key, spec.argv, env=spec.env, log_path=work / "server.log", cwd=str(REPO))
    try:
        url, startup_s = wait_ready(spec, tree, settings.served_name)
        print(f"{spec.label} serving {settings.served_name} at {url} ({startup_s:.1f} s); log {work / 'server.log'}")
        for pid in _procs.descendants(tree.pid):
            print(_describe(pid))
        print("HELD", flush=True)
        stop.wait()
    finally:
        _procs.stop(tree)


if __name__ == "__main__":
    main()
