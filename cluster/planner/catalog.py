"""Built-in catalog of public architectures, and the lookup from a model name, hub id or local dir.

Entries hold the numbers of the published config.json; the two entries without a public
config (`dense-128b`, `moe-122b-a10b`) are plausible architectures sized to the quoted totals,
with every architectural field listed in `estimated`.
"""

from __future__ import annotations

from pathlib import Path

from cluster.planner.errors import PlannerError
from cluster.planner.models import ModelSpec
from serve_app.schema import resolve_local_dir
from serve_app.schema import TINY_PREFIX, TINY_SPECS

__all__ = ["MODEL_CATALOG", "model_spec"]

_ARCH = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
         "intermediate_size", "vocab_size")

MODEL_CATALOG: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec(
        name="mistral-7b", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768,
        hub_ids=("mistralai/Mistral-7B-Instruct-v0.2",),
        notes="Mistral-7B-Instruct-v0.2 config (no sliding window; v0.1 used a 4096-token window).",
    ),
    ModelSpec(
        name="mistral-7b-v0.3", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=14336, vocab_size=32768, max_position_embeddings=32768,
        hub_ids=("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"),
        notes="Mistral-7B-v0.3 config: v0.2's architecture with the vocabulary extended to 32768.",
    ),
    ModelSpec(
        name="mixtral-8x7b", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=14336, vocab_size=32000, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=14336, max_position_embeddings=32768,
        hub_ids=("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        notes="Mixtral-8x7B-v0.1 config: 46.7B parameters, 12.9B active per token.",
    ),
    ModelSpec(
        name="mixtral-8x22b", hidden_size=6144, num_hidden_layers=56, num_attention_heads=48, num_key_value_heads=8,
        head_dim=128, intermediate_size=16384, vocab_size=32768, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=16384, max_position_embeddings=65536,
        hub_ids=("mistralai/Mixtral-8x22B-v0.1", "mistralai/Mixtral-8x22B-Instruct-v0.1"),
        notes="Mixtral-8x22B-v0.1 config: 141B parameters, 39B active per token.",
    ),
    ModelSpec(
        name="llama-70b", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
        head_dim=128, intermediate_size=28672, vocab_size=128256, max_position_embeddings=131072,
        hub_ids=("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
                 "meta-llama/Meta-Llama-3-70B-Instruct"),
        notes="Llama-3.x-70B config (70.6B parameters); the max context is 8192 for Llama 3.0.",
    ),
    ModelSpec(
        name="dense-128b", hidden_size=12288, num_hidden_layers=92, num_attention_heads=96, num_key_value_heads=8,
        head_dim=128, intermediate_size=28672, vocab_size=32768, max_position_embeddings=131072,
        estimated=_ARCH + ("max_position_embeddings",),
        # The scenarios' model; its config is not public, so the numbers stay an estimate.
        hub_ids=("mistralai/Mistral-Medium-3.5-128B",),
        notes="Estimate: a Mistral-Large-2-shaped dense model (which has 88 layers, 123B) grown to 92 layers = 128.1B.",
    ),
    ModelSpec(
        name="moe-122b-a10b", hidden_size=4096, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=4,
        head_dim=128, intermediate_size=12288, vocab_size=248320, num_experts=256, num_experts_per_tok=8,
        moe_intermediate_size=768, shared_expert_intermediate_size=1536, max_position_embeddings=262144,
        estimated=_ARCH + ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                           "shared_expert_intermediate_size", "max_position_embeddings"),
        hub_ids=("Qwen/Qwen3.5-122B-A10B",),
        notes="Estimate: a Qwen-MoE-shaped model (256 experts top-8 plus a shared expert) sized to 122B total, 10B active; "
              "the real model's attention may differ (e.g. hybrid linear attention), which changes KV figures.",
    ),
)}


def model_spec(name_or_source: str) -> ModelSpec:
    """Find a model by catalog name, hub id alias, `tiny:<kind>` or local directory (holding config.json).

    Raises PlannerError naming the choices when nothing matches.
    """
    key = name_or_source.strip()
    by_name = {n.lower(): m for n, m in MODEL_CATALOG.items()}
    if key.lower() in by_name:
        return by_name[key.lower()]
    for m in MODEL_CATALOG.values():
        if key.lower() in (h.lower() for h in m.hub_ids):
            return m
    if key.startswith(TINY_PREFIX) and key[len(TINY_PREFIX):] in TINY_SPECS:
        _, spec = TINY_SPECS[key[len(TINY_PREFIX):]]
        return ModelSpec.from_hf_config(spec, name=key)
    local = resolve_local_dir(key) or Path(key).expanduser()  # the CLI also takes a bare relative path
    if local.is_dir():
        return ModelSpec.from_dir(local)
    choices = ", ".join(MODEL_CATALOG)
    raise PlannerError(
        f"model {name_or_source!r} is neither a catalog name ({choices}), a known hub id, nor a local dir "
        f"with config.json; pass one of those (a hub id needs its config.json downloaded to a local dir)"
    )
