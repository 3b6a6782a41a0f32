"""Read the few architecture numbers config validation needs from a model's config.json.

Pure: json and the filesystem only. The capacity planner (cluster/planner) builds its richer
model description on top of this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serve_app.schema._tiny import TINY_PREFIX, TINY_SPECS, tiny_model_dir

__all__ = ["ModelShape", "shape_of_source", "resolve_local_dir", "is_local_source"]


@dataclass(frozen=True)
class ModelShape:
    """Architecture numbers that constrain parallelism."""

    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    num_experts: int  # 0 for dense models
    max_position_embeddings: int | None

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelShape":
        """Build from a Hugging Face config dict (Mistral, Llama, Mixtral, Qwen-MoE styles)."""
        text = cfg.get("text_config") or cfg  # multimodal wrappers nest the language model
        heads = int(text["num_attention_heads"])
        return cls(
            num_attention_heads=heads,
            num_key_value_heads=int(text.get("num_key_value_heads") or heads),
            num_hidden_layers=int(text["num_hidden_layers"]),
            num_experts=int(text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts") or 0),
            max_position_embeddings=text.get("max_position_embeddings"),
        )


def is_local_source(source: str) -> bool:
    """Say whether `source` names a local directory (absolute, ~ or ./ path) rather than a hub id."""
    return source.startswith(("/", "~", "./", "../")) or source.startswith(TINY_PREFIX)


def resolve_local_dir(source: str) -> Path | None:
    """Return the local directory a source refers to, or None for a hub id."""
    if source.startswith(TINY_PREFIX):
        return tiny_model_dir(source[len(TINY_PREFIX):])
    if is_local_source(source):
        return Path(source).expanduser().resolve()
    return None


def shape_of_source(source: str) -> ModelShape | None:
    """Return the shape of a tiny spec or local dir, or None when it cannot be known offline.

    Raises FileNotFoundError / ValueError with a readable message for a broken local dir.
    """
    if source.startswith(TINY_PREFIX):
        _, spec = TINY_SPECS[source[len(TINY_PREFIX):]]
        return ModelShape.from_hf_config(spec)
    local = resolve_local_dir(source)
    if local is None:
        return None  # a hub id: nothing is downloaded at load time
    cfg_file = local / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} does not exist")
    try:
        return ModelShape.from_hf_config(json.loads(cfg_file.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_file} is not a usable Hugging Face config ({type(e).__name__}: {e})") from e
