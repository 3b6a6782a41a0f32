"""The serving stacks compared, each a command line and an environment over the same engine settings.

    vllm              python -m vllm.entrypoints.openai.api_server    (vLLM's own OpenAI server)
    rayllm            python -m bench.rayllm_driver                   (ray.serve.llm.build_openai_app)
    fleetserve        python -m bench.fleetserve_driver --config ...  (serve_app.launch.deploy, one model,
                      as shipped: http.fast_path true, i.e. HAProxy on the HTTP port forwarding to
                      the replica's own port, throughput-optimized Serve, Ray workers at nice 0)
    fleetserve-proxy  the same with http.fast_path false: Serve's Python proxy, Serve's defaults
    fleetserve-tput   the fast path without HAProxy: clients call the replica's own port
    fleetserve-dashboard  as shipped plus Ray's dashboard (local_ray.dashboard: true)

`front_ends=N` (bench.frontend_capacity) gives raw vLLM N API-server processes (`vllm serve
--api-server-count N`, through bench/vllm_serve.py) and fleetserve `models[0].front_ends: N`.

Every stack gets the same model dir, served name, dtype, eager mode, max_num_seqs,
max_model_len, KV cache size and OpenMP binding; vLLM's own default for
VLLM_ENABLE_V1_MULTIPROCESSING (engine core in its own process) is kept for all.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cluster.ray_env import free_local_port as free_port

__all__ = ["EngineSettings", "StackSpec", "STACK_KEYS", "build_stack", "base_env"]

STACK_KEYS = ("vllm", "rayllm", "fleetserve", "fleetserve-proxy", "fleetserve-tput", "fleetserve-dashboard")
REPO = Path(__file__).resolve().parent.parent

@dataclass(frozen=True)
class EngineSettings:
    """What every stack's vLLM engine gets."""

    model_dir: str
    served_name: str = "tiny-dense"
    dtype: str = "bfloat16"
    enforce_eager: bool = True
    max_num_seqs: int = 32
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    # vLLM's CPU default: 'auto' pins the worker's OpenMP threads to the cores left after reserving
    # one per rank for the scheduler and front end (on 2 cores: worker on core 0, the rest on core 1).
    # Stated explicitly because fleetserve's CPU defaults are nobind / 0 reserved (one OpenMP thread
    # per core, racing the front end). 'auto' works inside Ray actors for one-rank engines.
    omp_threads_bind: str = "auto"
    omp_reserved_cpus: int | None = 1

    def engine_kwargs(self) -> dict:
        return {"dtype": self.dtype, "enforce_eager": self.enforce_eager, "max_num_seqs": self.max_num_seqs,
                "max_model_len": self.max_model_len}

    def engine_env(self) -> dict[str, str]:
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": self.omp_threads_bind}
        if self.omp_reserved_cpus is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(self.omp_reserved_cpus)
        return env


@dataclass(frozen=True)
class StackSpec:
    """How to start one stack and what to expect of its streams."""

    key: str
    label: str
    argv: list[str]
    env: dict[str, str]
    url: str | None  # known before start; None: the driver prints "READY <url>"
    time_batched_ms: float = 0.0  # the server groups streamed tokens every N ms by design
    notes: tuple[str, ...] = field(default_factory=tuple)


def base_env(settings: EngineSettings) -> dict[str, str]:
    """The environment every stack starts with: ours, minus anything pointing at another Ray or engine mode."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "VLLM_ENABLE_V1_MULTIPROCESSING", "RAY_worker_niceness")
           and not k.startswith(("RAY_SERVE_", "VLLM_CPU_", "OMP_", "OTEL_"))}  # OTEL_*: would override the config's telemetry
    env.update(settings.engine_env())
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
    return env


def _fleetserve_config(settings: EngineSettings, port: int, path: Path, *, fast_path: bool = True,
                       dashboard: bool = False, telemetry: dict | None = None, front_ends: int | None = None) -> Path:
    cfg = {
        "name": "fleetserve",
        "http": {"host": "127.0.0.1", "port": port, "fast_path": fast_path},
        "local_ray": {"dashboard": dashboard},
        "models": [{
            "name": settings.served_name,
            "source": settings.model_dir,
            "max_model_len": settings.max_model_len,
            "engine_args": {k: v for k, v in settings.engine_kwargs().items() if k != "max_model_len"},
            "placement": {"accelerator": "CPU"},
            "env": settings.engine_env(),
        }],
    }
    if telemetry is not None:
        cfg["telemetry"] = telemetry
    if front_ends is not None:
        cfg["models"][0]["front_ends"] = front_ends
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
    return path


def build_stack(key: str, settings: EngineSettings, *, work_dir: Path, python: str = sys.executable,
                experiments: tuple[str, ...] = (), telemetry: dict | None = None,
                front_ends: int | None = None) -> StackSpec:
    """Return the command line and environment of stack `key` (one of STACK_KEYS), on fresh ports.

    `experiments` (bench._experiments) apply to the fleetserve stacks and are named in their label.
    `telemetry` is the fleetserve config's `telemetry` block (None: the config has none, tracing off).
    `front_ends`: front-end processes per engine, for `vllm` and the fleetserve stacks (None: each
    one's default, and raw vLLM through its api_server module as before).
    """
    if front_ends is not None and key not in ("vllm", "fleetserve"):
        raise ValueError(f"front_ends={front_ends}: only for the stacks vllm and fleetserve, not {key!r}")
    spec = _build_stack(key, settings, work_dir=work_dir, python=python, telemetry=telemetry, front_ends=front_ends)
    if not experiments or not key.startswith("fleetserve"):
        return spec
    return StackSpec(spec.key, f"{spec.label} [{', '.join(experiments)}]",
                     spec.argv + [a for e in experiments for a in ("--experiment", e)], spec.env, spec.url,
                     spec.time_batched_ms, spec.notes + (f"experiment: {', '.join(experiments)} off (bench._experiments)",))


def _build_stack(key: str, settings: EngineSettings, *, work_dir: Path, python: str,
                 telemetry: dict | None = None, front_ends: int | None = None) -> StackSpec:
    env = base_env(settings)
    port = free_port()
    if key == "vllm":
        # Only `vllm serve` has --api-server-count; the module entry point stays the default baseline.
        entry = ["-m", "vllm.entrypoints.openai.api_server"] if front_ends is None else \
            [str(REPO / "bench" / "vllm_serve.py"), "--api-server-count", str(front_ends)]
        argv = [python, *entry, "--model", settings.model_dir,
                "--served-model-name", settings.served_name, "--host", "127.0.0.1", "--port", str(port),
                "--dtype", settings.dtype, "--max-num-seqs", str(settings.max_num_seqs),
                "--max-model-len", str(settings.max_model_len)]
        if settings.enforce_eager:
            argv.append("--enforce-eager")
        label = "raw vLLM" if front_ends is None else f"raw vLLM, --api-server-count {front_ends}"
        return StackSpec(key, label, argv, env, f"http://127.0.0.1:{port}")
    if key == "rayllm":
        argv = [python, "-m", "bench.rayllm_driver", "--model-dir", settings.model_dir, "--name", settings.served_name,
                "--port", str(port), "--engine-kwargs", json.dumps(settings.engine_kwargs()),
                "--env", json.dumps(settings.engine_env())]
        return StackSpec(key, "Ray Serve LLM", argv, env, None, time_batched_ms=50.0,
                         notes=("as shipped: ingress deployment + LLMServer behind Serve's proxy, "
                                "streamed output grouped every 50 ms (RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS)",))
    if key.startswith("fleetserve"):
        cfg = _fleetserve_config(settings, port, work_dir / f"{key}.yaml", fast_path=key != "fleetserve-proxy",
                                 dashboard=key == "fleetserve-dashboard", telemetry=telemetry, front_ends=front_ends)
        argv = [python, "-m", "bench.fleetserve_driver", "--config", str(cfg)]
        if key == "fleetserve":
            label = "fleetserve" if front_ends is None else f"fleetserve, front_ends {front_ends}"
            return StackSpec(key, label, argv, env, None, notes=(
                "as shipped (http.fast_path: true): HAProxy on the config's port forwarding to the model replica, "
                "which serves vLLM's OpenAI app itself (direct ingress); env from cluster/ray_env.py",))
        if key == "fleetserve-proxy":
            return StackSpec(key, "fleetserve (fast_path: false)", argv, env, None, notes=(
                "http.fast_path: false: Serve's Python proxy on the config's port, then the model replica (the app's "
                "ingress); Serve's defaults, Ray workers at nice 15",))
        if key == "fleetserve-tput":
            env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"  # ensure_ray only sets defaults: this one wins
            return StackSpec(key, "fleetserve (fast path, no HAProxy)", argv, env, None, notes=(
                "fast path with RAY_SERVE_ENABLE_HA_PROXY=0: clients call the replica's own direct-ingress port "
                "(30000-31000), no HAProxy hop",))
        if key == "fleetserve-dashboard":
            return StackSpec(key, "fleetserve (with Ray's dashboard)", argv, env, None, notes=(
                "as shipped plus local_ray.dashboard: true (ray.init(include_dashboard=True))",))
    raise ValueError(f"unknown stack {key!r}; use one of {', '.join(STACK_KEYS)}")
