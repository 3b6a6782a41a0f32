"""Start tests/loadtest_helpers/sse_server.py in a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

__all__ = ["sse_server", "SERVER_SCRIPT"]

SERVER_SCRIPT = Path(__file__).with_name("sse_server.py")


@contextlib.contextmanager
def sse_server(*, ttft_ms: float, itl_ms: float, start_timeout_s: float = 20.0) -> Iterator[str]:
    """Yield the base URL of a server streaming content chunk k at ttft_ms + k * itl_ms; stop it after.

    Started in the caller's session: a server in its own session was seen delivering streams
    in bursts on these machines (NOTES-cpu-stack.md).
    """
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(start_timeout_s)  # poll with a deadline rather than block forever
        if not first or not first[0].startswith("PORT "):
            raise RuntimeError(f"sse_server did not start within {start_timeout_s} s (exit code {proc.poll()})")
        yield f"http://127.0.0.1:{int(first[0].split()[1])}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
