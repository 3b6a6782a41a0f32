"""Load the config from YAML or a dict, turning every validation failure into one ConfigError.

Precedence, first wins: an explicit path or dict argument, then $FLEETSERVE_CONFIG, then the
embedded default (default.yaml beside this file). Env vars are read here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from serve_app.schema._engine_args import engine_args_problems
from serve_app.schema._schema import AppConfig
from serve_app.errors import ConfigError, FieldError

__all__ = ["load_config", "parse_config", "DEFAULT_CONFIG_PATH", "CONFIG_ENV_VAR"]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
CONFIG_ENV_VAR = "FLEETSERVE_CONFIG"


def load_config(path: str | os.PathLike | None = None) -> AppConfig:
    """Load and validate the config at `path`, else $FLEETSERVE_CONFIG, else the embedded default.

    Raises ConfigError naming each bad field, its value and the rule it breaks.
    """
    chosen = path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    p = Path(chosen).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError([("", f"config file {p} does not exist")], source=str(p)) from e
    except yaml.YAMLError as e:
        raise ConfigError([("", f"not valid YAML: {e}")], source=str(p)) from e
    return parse_config(data, source=str(p))


def parse_config(data: Any, *, source: str = "config") -> AppConfig:
    """Validate an already-parsed mapping (e.g. Serve builder args) into an AppConfig."""
    if not isinstance(data, Mapping):
        raise ConfigError([("", f"top level must be a mapping, got {type(data).__name__}")], source=source)
    try:
        config = AppConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(_problems(e), source=source) from None
    # engine_args go to vLLM unread by the schema: check their names against vLLM's own parser now,
    # not at replica start-up on the cluster.
    problems = [p for i, m in enumerate(config.models) if m.engine == "vllm"
                for p in engine_args_problems(m.engine_args, where=f"models[{i}]")]
    if problems:
        raise ConfigError(problems, source=source)
    return config


def _problems(e: ValidationError) -> list[tuple[str, str]]:
    out = []
    errors = e.errors(include_url=False)
    # A union field (e.g. `parallelism: Parallelism | "auto"`) reports one error per member, with
    # the member's tag in the loc; keep the errors of the structured member, named by field path.
    tagged = [e for e in errors if any(_is_tag(p) for p in e["loc"])]
    if tagged:
        structured = [e for e in tagged if not any(isinstance(p, str) and p.startswith("literal[") for p in e["loc"])]
        errors = [e for e in errors if e not in tagged] + [
            {**e, "loc": tuple(p for p in e["loc"] if not _is_tag(p))} for e in (structured or tagged)
        ]
    for err in errors:
        # "models: should have at least 1 item" only because every item failed: say the item errors only
        if err["type"] == "too_short" and any(o is not err and o["loc"][: len(err["loc"])] == err["loc"] for o in errors):
            continue
        loc = list(err["loc"])
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, FieldError):
            loc += inner.path.split(".")
            msg = inner.message
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], (dict, list)):
                msg = f"{err['input']!r}: {msg}"
        out.append((_path(loc), msg))
    return out


def _is_tag(part) -> bool:
    return isinstance(part, str) and "[" in part and not part.startswith("[")


def _path(loc: list) -> str:
    s = ""
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
        elif part.startswith("["):  # FieldError paths may carry their own index
            s += part
        else:
            s += ("." if s else "") + part
    return s
