"""Can a model's `source` be read here? Local dirs, tiny specs and hub ids, checked before an engine starts.

vLLM, given a hub id it cannot fetch, retries the download for ~30 s per replica start and
Serve restarts the replica, so a laptop without network sat silent for minutes. One quick
look first — the local Hugging Face cache, then one request to the hub with a short timeout —
turns that into one message naming the field, the id and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from serve_app.schema import TINY_PREFIX, resolve_local_dir

__all__ = ["SourceStatus", "source_status"]

_HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SourceStatus:
    """What is known about a source: `ok` False is an error; `note` says how it was resolved."""

    ok: bool
    note: str
    needs_network: bool = False  # a hub id not cached here: replicas must download it


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def source_status(source: str, *, network: bool) -> SourceStatus:
    """Say whether `source` can be loaded: a local dir with config.json, a tiny spec, or a hub id.

    A hub id is fine when its config.json is in the local cache; otherwise, with `network`,
    one metadata request to the hub decides. Without `network` an uncached id is not an error
    (replicas may run where the hub is reachable): the note says so.
    """
    if source.startswith(TINY_PREFIX):
        return SourceStatus(True, "tiny model, built locally on first use")
    local = resolve_local_dir(source)
    if local is not None:
        if not (local / "config.json").is_file():
            return SourceStatus(False, f"local directory {local} has no config.json; fix the path or download the model there")
        return SourceStatus(True, f"local directory {local}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        return SourceStatus(True, f"hub id in the local Hugging Face cache ({os.path.dirname(cached)})")
    if not network:
        return SourceStatus(True, "hub id not in the local Hugging Face cache: replicas download it, so they need "
                                  "network access to huggingface.co (or pre-download with `huggingface-cli download`)",
                            needs_network=True)
    if _offline():
        return SourceStatus(False, f"hub id {source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                   "download it first (`huggingface-cli download ...`) or give a local directory")
    from huggingface_hub import model_info

    try:
        model_info(source, timeout=_HUB_TIMEOUT_S)
    except Exception as e:  # network errors, 401/404 from the hub: all mean "cannot load it here"
        return SourceStatus(False, f"hub id {source!r} is not in the local Hugging Face cache and the hub did not answer "
                                   f"({type(e).__name__}: {str(e)[:200]}); give a local directory, pre-download it, "
                                   "or check network access and HF_TOKEN")
    return SourceStatus(True, "hub id reachable on the hub (not cached: replicas download it)", needs_network=True)
