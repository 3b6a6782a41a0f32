"""Model descriptions: reading config.json (dense and MoE styles), the catalog, and parameter counting."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.planner import MODEL_CATALOG, ModelSpec, PlannerError, model_spec, param_counts

# Published config.json numbers (the notes).
PUBLIC = {
    "mistral-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=32000, num_experts=0),
    "mixtral-8x7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=32000, num_experts=8, num_experts_per_tok=2),
    "mixtral-8x22b": dict(hidden_size=6144, num_hidden_layers=56, num_attention_heads=48, num_key_value_heads=8,
                          intermediate_size=16384, vocab_size=32768, num_experts=8, num_experts_per_tok=2),
    "llama-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                      intermediate_size=28672, vocab_size=128256, num_experts=0),
}

MISTRAL_V01 = {  # Mistral-7B-v0.1: a 4096-token sliding window
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
    "max_position_embeddings": 32768, "sliding_window": 4096, "tie_word_embeddings": False,
}
LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "tie_word_embeddings": False,
}
MIXTRAL = {
    "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
    "num_experts_per_tok": 2, "sliding_window": None, "max_position_embeddings": 32768,
}
QWEN15_MOE = {  # Qwen1.5-MoE-A2.7B: 60 experts top-4 plus a gated shared expert; window present but unused
    "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 16, "vocab_size": 151936, "num_experts": 60, "num_experts_per_tok": 4,
    "use_sliding_window": False, "sliding_window": 32768, "max_position_embeddings": 8192, "tie_word_embeddings": False,
}
QWEN3_MOE = {  # Qwen3-30B-A3B: explicit head_dim, q/k norms, 128 experts top-8
    "model_type": "qwen3_moe", "hidden_size": 2048, "head_dim": 128, "intermediate_size": 6144,
    "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8, "max_position_embeddings": 40960,
    "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_catalog_holds_the_public_config_numbers(name):
    m = MODEL_CATALOG[name]
    for field, value in PUBLIC[name].items():
        assert getattr(m, field) == value, field
    assert m.head_dim == 128 and not m.estimated


@pytest.mark.parametrize("name", ["dense-128b", "moe-122b-a10b"])
def test_unpublished_entries_mark_their_estimates(name):
    m = MODEL_CATALOG[name]
    assert {"hidden_size", "num_hidden_layers", "num_key_value_heads"} <= set(m.estimated)
    assert "Estimate" in m.notes


@pytest.mark.parametrize(("cfg", "expect"), [
    (MISTRAL_V01, dict(sliding_window=4096, head_dim=128, num_experts=0, tie_word_embeddings=False)),
    (LLAMA3_8B, dict(sliding_window=None, vocab_size=128256, max_position_embeddings=131072)),
    (MIXTRAL, dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=14336, shared_expert_intermediate_size=0)),
    (QWEN15_MOE, dict(num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
                      shared_expert_intermediate_size=5632, sliding_window=None, attention_bias=True)),
    (QWEN3_MOE, dict(num_experts=128, head_dim=128, qk_norm=True, num_key_value_heads=4, attention_bias=False)),
    ({"text_config": MIXTRAL, "architectures": ["X"]}, dict(num_experts=8, hidden_size=4096)),
])
def test_from_hf_config(cfg, expect):
    m = ModelSpec.from_hf_config(cfg, name="x")
    for field, value in expect.items():
        assert getattr(m, field) == value, field


@pytest.mark.parametrize(("cfg", "total_b", "active_b"), [
    (MISTRAL_V01, 7.24, 7.24),
    (LLAMA3_8B, 8.03, 8.03),
    (QWEN15_MOE, 14.3, 2.7),  # Qwen1.5-MoE-A2.7B
    (QWEN3_MOE, 30.5, 3.3),  # Qwen3-30B-A3B
])
def test_published_totals_of_read_configs(cfg, total_b, active_b):
    c = param_counts(ModelSpec.from_hf_config(cfg, name="x"))
    assert c.total / 1e9 == pytest.approx(total_b, rel=0.02)
    assert c.active / 1e9 == pytest.approx(active_b, rel=0.03)


@pytest.mark.parametrize(("cfg", "match"), [
    ({**LLAMA3_8B, "kv_lora_rank": 512}, "latent attention"),
    ({k: v for k, v in LLAMA3_8B.items() if k != "hidden_size"}, "not a usable Hugging Face config"),
    ({**MIXTRAL, "num_experts_per_tok": 9}, "num_experts_per_tok=9"),
])
def test_unusable_configs_are_refused(cfg, match):
    with pytest.raises(PlannerError, match=match):
        ModelSpec.from_hf_config(cfg, name="x")


@pytest.mark.parametrize(("hub_id", "name"), [
    ("mistralai/Mistral-Medium-3.5-128B", "dense-128b"),
    ("Qwen/Qwen3.5-122B-A10B", "moe-122b-a10b"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-v0.3"),
])
def test_the_scenarios_hub_ids_are_known(hub_id, name):
    assert model_spec(hub_id) is MODEL_CATALOG[name]


def test_every_scenario_source_is_in_the_catalog():
    import yaml

    from conftest import REPO

    for f in sorted((REPO / "cluster/k8s/scenarios").glob("*.yaml")):
        for m in yaml.safe_load(f.read_text())["models"]:
            model_spec(m["source"])  # raises PlannerError for an unknown id


def test_lookup_by_name_hub_id_tiny_and_dir(tmp_path, monkeypatch):
    assert model_spec("Mixtral-8x7B") is MODEL_CATALOG["mixtral-8x7b"]
    assert model_spec("mistralai/Mixtral-8x22B-Instruct-v0.1") is MODEL_CATALOG["mixtral-8x22b"]
    assert model_spec("tiny:moe").num_experts == 8
    d = tmp_path / "qwen3-30b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(QWEN3_MOE))
    assert model_spec(str(d)).name == "qwen3-30b"
    monkeypatch.chdir(tmp_path)
    assert model_spec("qwen3-30b").num_experts == 128  # a bare relative dir, as typed on the CLI
    with pytest.raises(PlannerError, match="mistral-7b, mistral-7b-v0.3, mixtral-8x7b"):
        model_spec("org/unknown-model")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(PlannerError, match="not JSON"):
        model_spec("./broken")


def test_estimated_must_name_fields():
    with pytest.raises(PlannerError, match="hidden"):
        replace(MODEL_CATALOG["mistral-7b"], estimated=("hidden",))


def test_counts_match_transformers_on_the_tiny_and_qwen_models():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from serve_app.schema import TINY_SPECS

    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=1000)
    cases = [(arch, cfg) for arch, cfg in TINY_SPECS.values()] + [
        ("Qwen2MoeForCausalLM", {**QWEN15_MOE, **small, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
                                 "num_experts": 6}),
        ("Qwen3MoeForCausalLM", {**QWEN3_MOE, **small, "head_dim": 32, "moe_intermediate_size": 32, "num_experts": 6,
                                 "num_experts_per_tok": 2}),
    ]
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for arch, cfg in cases:
        hf_cfg = transformers.AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = getattr(transformers, arch)(hf_cfg)
        expected = sum(p.numel() for p in model.parameters())
        assert param_counts(ModelSpec.from_hf_config(hf_cfg.to_dict(), name=arch)).total == expected, arch


_dims = st.sampled_from([64, 128, 256])


@st.composite
def models(draw):
    heads = draw(st.sampled_from([4, 8, 16]))
    experts = draw(st.sampled_from([0, 4, 8, 16]))
    return ModelSpec(
        name="h", hidden_size=draw(_dims) * 4, num_hidden_layers=draw(st.integers(1, 48)), num_attention_heads=heads,
        num_key_value_heads=draw(st.sampled_from([d for d in (1, 2, 4, 8) if heads % d == 0])), head_dim=draw(_dims),
        intermediate_size=draw(_dims) * 8, vocab_size=draw(st.integers(100, 200_000)),
        tie_word_embeddings=draw(st.booleans()), num_experts=experts,
        num_experts_per_tok=draw(st.integers(1, experts)) if experts else 0,
        moe_intermediate_size=draw(_dims) * 2 if experts else 0,
        shared_expert_intermediate_size=draw(st.sampled_from([0, 256])) if experts else 0,
    )


@settings(max_examples=60, deadline=None)
@given(models())
def test_active_never_exceeds_total_and_equals_it_for_dense(m):
    c = param_counts(m)
    assert 0 < c.active <= c.total
    assert (c.active == c.total) == (not m.is_moe or m.num_experts_per_tok == m.num_experts)


@settings(max_examples=60, deadline=None)
@given(models())
def test_an_extra_expert_adds_weights_but_no_active_compute(m):
    if not m.is_moe:
        return
    more = replace(m, num_experts=m.num_experts + 1)
    a, b = param_counts(m), param_counts(more)
    router = m.num_hidden_layers * m.hidden_size  # one more router column per layer
    assert b.total - a.total == m.num_hidden_layers * a.expert + router
    assert b.active - a.active == router


@settings(max_examples=60, deadline=None)
@given(models())
def test_tying_embeddings_saves_exactly_the_lm_head(m):
    tied, untied = param_counts(replace(m, tie_word_embeddings=True)), param_counts(replace(m, tie_word_embeddings=False))
    assert untied.total - tied.total == m.vocab_size * m.hidden_size
