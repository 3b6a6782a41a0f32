"""Model descriptions for capacity planning, and their parameter counts computed from the architecture.

A `ModelSpec` holds the architecture numbers of a decoder-only transformer (dense or MoE) as a
Hugging Face config.json spells them; `param_counts` derives total and per-token-active
parameters from them (no published totals are stored, so the catalog's figures are checked by
the math). Pure: json and the filesystem only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cluster.planner.errors import PlannerError
from serve_app.schema import ModelShape

__all__ = ["ModelSpec", "ParamCounts", "param_counts"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one decoder-only model; MoE when `num_experts` > 0."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    """Width of a dense MLP; MoE models use it only for their `num_dense_layers`."""
    vocab_size: int
    tie_word_embeddings: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    """Width of one routed expert (Mixtral: its `intermediate_size`)."""
    shared_expert_intermediate_size: int = 0
    """Total width of the always-on shared expert(s) of Qwen-MoE / DeepSeek styles; 0 for Mixtral."""
    num_dense_layers: int = 0
    """Layers of an MoE model that keep a dense MLP (Qwen `mlp_only_layers`, DeepSeek `first_k_dense_replace`)."""
    attention_bias: bool = False
    qk_norm: bool = False
    """Per-head RMS norms on queries and keys (Qwen3)."""
    sliding_window: int | None = None
    """Tokens of KV kept per sequence when every layer attends over a sliding window; None = full context."""
    max_position_embeddings: int | None = None
    hub_ids: tuple[str, ...] = ()
    """Hub ids this entry stands for, so a `source: org/name` can be planned offline."""
    estimated: tuple[str, ...] = ()
    """Names of fields that are estimates rather than a published config."""
    notes: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.estimated) - {f.name for f in fields(self)}
        if unknown:
            raise PlannerError(f"model {self.name!r}: estimated names unknown fields {sorted(unknown)}")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise PlannerError(
                f"model {self.name!r}: num_experts_per_tok={self.num_experts_per_tok} must lie in "
                f"1..num_experts={self.num_experts}"
            )

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model."""
        return self.num_experts > 0

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a routed mixture of experts."""
        return self.num_hidden_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def shape(self) -> ModelShape:
        """The config package's view of this model (what config validation checks)."""
        return ModelShape(self.num_attention_heads, self.num_key_value_heads, self.num_hidden_layers,
                          self.num_experts, self.max_position_embeddings)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], *, name: str) -> "ModelSpec":
        """Build from a Hugging Face config dict: Mistral, Llama, Mixtral, Qwen2/Qwen3(-MoE) styles.

        Raises PlannerError for a config that lacks a needed key or uses attention this planner
        does not model (DeepSeek MLA).
        """
        text = cfg.get("text_config") or cfg  # multimodal wrappers nest the language model
        if "kv_lora_rank" in text:
            raise PlannerError(f"model {name!r}: multi-head latent attention (kv_lora_rank) is not modeled by the planner")
        try:
            shape = ModelShape.from_hf_config(cfg)
            hidden = int(text["hidden_size"])
            experts = shape.num_experts
            inter = int(text.get("intermediate_size") or 0)
            moe_inter = int(text.get("moe_intermediate_size") or (inter if experts else 0))
            shared = int(text.get("shared_expert_intermediate_size") or 0)
            if not shared and text.get("n_shared_experts"):
                shared = int(text["n_shared_experts"]) * moe_inter
            dense_layers = len(text.get("mlp_only_layers") or ()) + int(text.get("first_k_dense_replace") or 0)
            # Qwen2 configs carry a sliding_window they do not use unless use_sliding_window is set.
            window = None if text.get("use_sliding_window") is False else text.get("sliding_window")
            return cls(
                name=name,
                hidden_size=hidden,
                num_hidden_layers=shape.num_hidden_layers,
                num_attention_heads=shape.num_attention_heads,
                num_key_value_heads=shape.num_key_value_heads,
                head_dim=int(text.get("head_dim") or hidden // shape.num_attention_heads),
                intermediate_size=inter,
                vocab_size=int(text["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                num_experts=experts,
                num_experts_per_tok=int(text.get("num_experts_per_tok") or 0) if experts else 0,
                moe_intermediate_size=moe_inter,
                shared_expert_intermediate_size=shared,
                num_dense_layers=dense_layers if experts else 0,
                attention_bias=bool(text.get("attention_bias") or text.get("model_type") in ("qwen2", "qwen2_moe")),
                qk_norm=text.get("model_type") in ("qwen3", "qwen3_moe"),
                sliding_window=int(window) if window else None,
                max_position_embeddings=shape.max_position_embeddings,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PlannerError(f"model {name!r}: not a usable Hugging Face config ({type(e).__name__}: {e})") from e

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelSpec":
        """Read `<path>/config.json`; the model is named after the directory. Raises PlannerError."""
        p = Path(path).expanduser()
        cfg_file = p / "config.json"
        try:
            cfg = json.loads(cfg_file.read_text())
        except FileNotFoundError as e:
            raise PlannerError(f"model dir {p}: {cfg_file} does not exist; pass a dir holding a Hugging Face config.json") from e
        except json.JSONDecodeError as e:
            raise PlannerError(f"model dir {p}: {cfg_file} is not JSON ({e})") from e
        return cls.from_hf_config(cfg, name=p.name)


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by role. Per-layer numbers are for one layer of that kind; totals are properties."""

    embedding: int
    lm_head: int  # 0 when tied to the embedding
    final_norm: int
    attention_linear: int  # q, k, v, o projections of one layer
    attention_small: int  # their biases and the layer's two norms
    dense_mlp: int  # gate, up, down of a dense layer's MLP
    expert: int  # one routed expert (gate, up, down)
    shared_expert: int  # the always-on shared expert(s) of one MoE layer
    router_small: int  # router (and shared-expert gate) of one MoE layer
    num_experts: int
    experts_per_tok: int
    dense_layers: int  # layers with a dense MLP
    moe_layers: int  # layers with routed experts

    @property
    def linear_per_dense_layer(self) -> int:
        """Quantizable weights of a dense layer."""
        return self.attention_linear + self.dense_mlp

    @property
    def routed_per_moe_layer(self) -> int:
        """All routed experts of one MoE layer."""
        return self.expert * self.num_experts

    @property
    def linear(self) -> int:
        """All quantizable (linear-layer) weights: what a weight-only quantization packs."""
        return (self.dense_layers * self.linear_per_dense_layer
                + self.moe_layers * (self.attention_linear + self.routed_per_moe_layer + self.shared_expert))

    @property
    def small(self) -> int:
        """Norms, biases and routers: kept in 16 bits by every format here."""
        layers = self.dense_layers + self.moe_layers
        return layers * self.attention_small + self.moe_layers * self.router_small + self.final_norm

    @property
    def embeddings(self) -> int:
        """Input embedding plus an untied output head."""
        return self.embedding + self.lm_head

    @property
    def total(self) -> int:
        """Every parameter of the checkpoint."""
        return self.linear + self.small + self.embeddings

    @property
    def active(self) -> int:
        """Parameters one token runs through: routed experts count `experts_per_tok` times, not `num_experts`."""
        idle = self.moe_layers * self.expert * (self.num_experts - self.experts_per_tok)
        return self.total - idle


def param_counts(m: ModelSpec) -> ParamCounts:
    """Count parameters from the architecture (Llama/Mistral/Mixtral/Qwen layouts, gated SwiGLU MLPs)."""
    h, hd = m.hidden_size, m.head_dim
    q_out, kv_out = m.num_attention_heads * hd, m.num_key_value_heads * hd
    bias = (q_out + 2 * kv_out) if m.attention_bias else 0
    return ParamCounts(
        embedding=m.vocab_size * h,
        lm_head=0 if m.tie_word_embeddings else m.vocab_size * h,
        final_norm=h,
        attention_linear=h * q_out + 2 * h * kv_out + q_out * h,
        attention_small=bias + 2 * h + (2 * hd if m.qk_norm else 0),
        dense_mlp=3 * h * m.intermediate_size,
        expert=3 * h * m.moe_intermediate_size if m.is_moe else 0,
        shared_expert=3 * h * m.shared_expert_intermediate_size if m.is_moe else 0,
        # Qwen-MoE gates its shared expert with a hidden -> 1 projection.
        router_small=(h * m.num_experts + (h if m.shared_expert_intermediate_size else 0)) if m.is_moe else 0,
        num_experts=m.num_experts,
        experts_per_tok=m.num_experts_per_tok,
        dense_layers=m.num_dense_layers if m.is_moe else m.num_hidden_layers,
        moe_layers=m.moe_layers,
    )
