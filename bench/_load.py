"""Drive a running stack: the project's Locust user (loadtest.run) and vLLM's `vllm bench serve`.

Both are closed loops with `concurrency` requests in flight, fixed input/output lengths and
ignore_eos, so every request generates exactly `output_len` tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._measure import RecordsCheck, check_records

__all__ = ["RunFigures", "locust_run", "vllm_bench_run"]

_VLLM_BENCH = Path(__file__).with_name("vllm_bench_serve.py")


@dataclass(frozen=True)
class RunFigures:
    """One repetition at one concurrency, by one load generator."""

    tool: str  # "locust" or "vllm-bench"
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    requests_ok: int
    requests_failed: int
    duration_s: float
    check: RecordsCheck | None = None  # Locust runs only: the burst check of its request log
    out: str = ""

    @property
    def valid(self) -> bool:
        return self.requests_ok > 0 and self.requests_failed == 0 and (self.check is None or not self.check.burst)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["valid"] = self.valid
        return d


def locust_run(url: str, model: str, *, concurrency: int, duration_s: float, input_len: int, output_len: int,
               out_dir: Path, time_batched_ms: float = 0.0, seed: int = 0) -> RunFigures:
    """Run the project's Locust user against `url` (one local locust process) and return its figures."""
    from loadtest import build_plan, read_requests, run

    plan = build_plan(models=[model], users=concurrency, duration_s=duration_s, input_len=input_len,
                      output_len=output_len, drain_s=3.0, seed=seed)
    res = run(url, plan, out_dir=out_dir, progress=None)
    ttft, itl = res.metrics.get("TTFT"), res.metrics.get("ITL")
    records = [r.model_dump() for r in read_requests(out_dir / "requests.jsonl")] if (out_dir / "requests.jsonl").exists() else []
    itl_p50 = itl.p50 if itl else None
    check = check_records(records, itl_p50_ms=itl_p50, time_batched_ms=time_batched_ms)
    return RunFigures("locust", concurrency, res.output_tokens_per_s, ttft.p50 if ttft else None,
                      ttft.p95 if ttft else None, itl_p50, res.requests.ok, res.requests.failed, res.duration_s,
                      check, str(out_dir))


def vllm_bench_run(url: str, model: str, *, tokenizer: str, concurrency: int, num_prompts: int, input_len: int,
                   output_len: int, out_dir: Path, seed: int = 0, python: str = sys.executable) -> RunFigures:
    """Run `vllm bench serve` (openai-chat backend, random dataset) against `url`; return its figures.

    Raises RuntimeError with the tail of its output when it fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result = out_dir / "vllm-bench.json"
    result.unlink(missing_ok=True)
    argv = [python, str(_VLLM_BENCH), "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len), "--ignore-eos",
            "--max-concurrency", str(concurrency), "--num-prompts", str(num_prompts), "--seed", str(seed),
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95", "--disable-tqdm",
            "--save-result", "--result-dir", str(out_dir), "--result-filename", result.name]
    log = out_dir / "vllm-bench.log"
    with open(log, "w") as f:
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900).returncode
    if code != 0 or not result.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"vllm bench serve exited with {code} against {url}; log tail:\n{tail}")
    d = json.loads(result.read_text())
    return RunFigures("vllm-bench", concurrency, float(d["output_throughput"]), d.get("p50_ttft_ms"), d.get("p95_ttft_ms"),
                      d.get("p50_itl_ms"), int(d["completed"]), int(d.get("failed", 0)), float(d["duration"]),
                      None, str(out_dir))
