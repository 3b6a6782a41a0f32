"""Specs of the tiny local models (random weights, built offline) and where they are cached.

Pure data: the builder in ``serve_app.tiny_models`` turns these into Hugging Face model dirs,
and config validation reads the same numbers, so a ``tiny:`` source is checked like a local dir.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TINY_SPECS", "TINY_PREFIX", "tiny_model_dir", "models_home"]

TINY_PREFIX = "tiny:"

_COMMON = dict(
    vocab_size=4096,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads share one KV head
    head_dim=64,
    max_position_embeddings=2048,
    sliding_window=None,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    tie_word_embeddings=False,
)

# name -> (architecture, HF config kwargs)
TINY_SPECS: dict[str, tuple[str, dict]] = {
    "dense": ("MistralForCausalLM", {**_COMMON, "model_type": "mistral", "intermediate_size": 512}),
    "moe": (
        "MixtralForCausalLM",
        {**_COMMON, "model_type": "mixtral", "intermediate_size": 256, "num_local_experts": 8, "num_experts_per_tok": 2},
    ),
}


def models_home() -> Path:
    """Return the folder that caches locally built models (``$FLEETSERVE_HOME/models``)."""
    home = os.environ.get("FLEETSERVE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "fleetserve")
    return Path(home) / "models"


def tiny_model_dir(kind: str) -> Path:
    """Return where the tiny model `kind` ("dense" or "moe") is (or will be) built."""
    return models_home() / f"tiny-{kind}"
