"""The load plan: what to send (models, endpoint, lengths, prompts) and how (shape, duration).

Pure: no locust. A plan is a frozen pydantic model written as JSON beside the run's results,
and read by every locust process (`--plan FILE`). Model names and the default host come from
the one AppConfig (`serve_app.config.load_config`) unless `--model` / `--host` are given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, ValidationError

from loadtest.distributions import FixedLength, LengthDist, parse_length
from loadtest.errors import LoadTestError
from loadtest.shapes import ConstantShape, PoissonShape, Shape, SpikeShape, StepShape, TraceShape
from serve_app.schema import Frozen

__all__ = ["LoadPlan", "build_plan", "models_from_config", "host_from_config", "parse_duration", "SHAPE_KINDS"]

SHAPE_KINDS = ("constant", "step", "spike", "poisson", "trace")


class LoadPlan(Frozen):
    """Everything a locust process needs to generate the load; identical on master and workers."""

    models: tuple[str, ...] = Field(..., min_length=1, description="Served model names; request i goes to models[i mod len].")
    endpoint: Literal["chat", "completions"] = Field("chat", description="/v1/chat/completions or /v1/completions.")
    input_tokens: LengthDist = Field(default_factory=lambda: FixedLength(tokens=128),
                                     description="Prompt length distribution (synthetic prompts; approximate tokens).")
    output_tokens: LengthDist = Field(default_factory=lambda: FixedLength(tokens=128),
                                      description="Output length distribution: each request's max_tokens.")
    ignore_eos: bool = Field(True, description="Send ignore_eos so every request generates exactly max_tokens (vLLM).")
    dataset_path: str | None = Field(None, description="JSONL prompts (see loadtest.prompts) instead of synthetic ones.")
    seed: int = Field(0, description="Seeds lengths, prompts and arrivals: same seed, same requests in the same order.")
    shape: Shape = Field(default_factory=ConstantShape, description="How load varies over time.")
    duration_s: float | None = Field(None, gt=0, description="Send requests for this long; none = until stopped.")
    drain_s: float = Field(5.0, ge=0, description="After duration_s, wait this long for requests in flight before stopping.")
    think_time_s: float = Field(0.0, ge=0, description="Closed loop: pause between a user's requests.")
    request_timeout_s: float = Field(600.0, gt=0, description="Per-request read timeout.")
    progress_interval_s: float = Field(5.0, gt=0, description="Seconds between progress lines from the master.")

    def to_file(self, path: str | Path) -> Path:
        """Write the plan as JSON and return the path."""
        p = Path(path)
        p.write_text(self.model_dump_json(indent=2) + "\n")
        return p

    @classmethod
    def from_file(cls, path: str | Path) -> "LoadPlan":
        """Read a plan JSON file; raise LoadTestError naming the file and each bad field."""
        p = Path(path).expanduser()
        try:
            return cls.model_validate(json.loads(p.read_text()))
        except OSError as e:
            raise LoadTestError(f"plan {p}: cannot read ({e.strerror or e})") from e
        except json.JSONDecodeError as e:
            raise LoadTestError(f"plan {p}: not JSON ({e.msg} at line {e.lineno})") from None
        except ValidationError as e:
            raise LoadTestError(f"plan {p}: " + _problems(e)) from None


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'plan'}: {err['msg']}" for err in e.errors(include_url=False))


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int | None, *, field: str = "duration") -> float | None:
    """Parse "90", "90s", "2m", "1h30m" into seconds; None or "" stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip().lower())
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smh]?)", "", text.strip().lower()).strip():
        raise LoadTestError(f"{field}={text!r} is not a duration; use e.g. 90, 90s, 2m or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def models_from_config(config, models: Sequence[str] = ()) -> tuple[str, ...]:
    """Return `models` checked against the AppConfig's served names, or all of them when empty.

    `config` is a `serve_app.config.AppConfig` (or None to take `models` unchecked).
    """
    if config is None:
        if not models:
            raise LoadTestError("no model to load: pass --model NAME or a config whose models[].name the app serves")
        return tuple(models)
    served = tuple(m.name for m in config.models)
    if not models:
        return served
    unknown = [m for m in models if m not in served]
    if unknown:
        raise LoadTestError(f"--model {', '.join(unknown)}: not served by the config (models[].name are "
                            f"{', '.join(served)}); pick one of those or pass a different --config")
    return tuple(models)


def host_from_config(config) -> str:
    """Return the base URL Serve's HTTP proxy listens on per the config (0.0.0.0 becomes 127.0.0.1)."""
    host = config.http.host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{config.http.port}"


def build_plan(
    *,
    models: Sequence[str],
    shape: str = "constant",
    users: int = 1,
    spawn_rate: float | None = None,
    duration_s: float | None = None,
    rate_rps: float | None = None,
    trace_path: str | None = None,
    time_scale: float = 1.0,
    step_users: int | None = None,
    step_s: float = 10.0,
    max_users: int | None = None,
    spike_users: int | None = None,
    spike_at_s: float = 10.0,
    spike_s: float = 10.0,
    input_len: str | int = 128,
    output_len: str | int = 128,
    endpoint: str = "chat",
    dataset_path: str | None = None,
    seed: int = 0,
    drain_s: float = 5.0,
    think_time_s: float = 0.0,
    progress_interval_s: float = 5.0,
) -> LoadPlan:
    """Build a plan from flat, CLI-style options (the typer CLI and `locust -f` share this).

    `users` is the closed-loop user count, or the carrier count for poisson/trace; `step_users`
    defaults to the starting users, `spike_users` to 4x users; `spawn_rate` defaults to starting
    every user (or step) within a second. Raises LoadTestError naming the
    option and the fix.
    """
    if shape not in SHAPE_KINDS:
        raise LoadTestError(f"--shape {shape!r} is unknown; use one of {', '.join(SHAPE_KINDS)}")
    try:
        # Default ramps are fast (all users within ~1 s): LLM runs measure steady load, not the ramp.
        fast = {"constant": float(users), "step": float(max(users, step_users or users))}.get(shape)
        rate_kw = {"spawn_rate": spawn_rate or fast} if (spawn_rate or fast) else {}
        if shape == "constant":
            sh = ConstantShape(users=users, **rate_kw)
        elif shape == "step":
            sh = StepShape(start_users=users, step_users=step_users or users, step_s=step_s,
                           max_users=max_users, **rate_kw)
        elif shape == "spike":
            sh = SpikeShape(base_users=users, spike_users=spike_users or 4 * users, spike_at_s=spike_at_s,
                            spike_s=spike_s, **rate_kw)
        elif shape == "poisson":
            if not rate_rps:
                raise LoadTestError("--shape poisson needs --rate (mean requests per second, over all workers)")
            sh = PoissonShape(rate_rps=rate_rps, users=users, **rate_kw)
        else:
            if not trace_path:
                raise LoadTestError("--shape trace needs --trace FILE (JSONL with t_s, input_tokens, output_tokens)")
            sh = TraceShape(path=str(Path(trace_path).expanduser().resolve()), time_scale=time_scale, users=users, **rate_kw)
        return LoadPlan(
            models=tuple(models), endpoint=endpoint, seed=seed, shape=sh, duration_s=duration_s, drain_s=drain_s,
            input_tokens=parse_length(input_len, field="--input-len"),
            output_tokens=parse_length(output_len, field="--output-len"),
            dataset_path=str(Path(dataset_path).expanduser().resolve()) if dataset_path else None,
            think_time_s=think_time_s, progress_interval_s=progress_interval_s,
        )
    except ValidationError as e:
        raise LoadTestError(f"load plan ({shape}): " + _problems(e)) from None
